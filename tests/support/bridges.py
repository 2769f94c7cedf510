"""Bridge processes: `python -m bridge serve` (or another server module taking BRIDGE_* settings)
on loopback ports chosen once, so that a restarted bridge is found where clients expect it."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .paths import PUSH_PATH, ROOT
from .ports import free_port, port_open


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
    root: Path = ROOT  # the checkout whose bridge runs (the benchmark compares two)

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
            self.proc = subprocess.Popen([sys.executable, "-m", *self.module.split()], env=env, cwd=self.root,
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
