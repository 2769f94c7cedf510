"""One running compose project of the container test, and what the tests ask of it: its
containers by service, commands inside them, the bridges' management endpoints (reached from
inside each container, since that port is published nowhere), the load balancer's log, and
clean-up of everything the project created."""
from __future__ import annotations

import re
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from bench._cluster import PUSH_PATH

from .engine import Engine, Project

PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
# GET a management path from inside a bridge container; prints the status, then the body.
MANAGEMENT_GET = """
import sys, urllib.error, urllib.request
try:
    answer = urllib.request.urlopen("http://127.0.0.1:8081" + sys.argv[1], timeout=5)
except urllib.error.HTTPError as error:
    answer = error
print(answer.status if hasattr(answer, "status") else answer.code)
sys.stdout.write(answer.read().decode())
"""
SAMPLE = re.compile(r"^([a-zA-Z_:][\w:]*(?:\{[^}]*\})?)\s+(\S+)")


@dataclass
class Stack:
    engine: Engine
    project: Project
    kafka_port: int
    push_port: int
    tls: Path
    token: str

    @property
    def push_url(self) -> str:
        return f"https://127.0.0.1:{self.push_port}{PUSH_PATH}"

    def kafka_options(self) -> dict:
        # The HOST listener advertises localhost:<port>, as the compose file does for 9092.
        return {"bootstrap_servers": f"localhost:{self.kafka_port}", "security_protocol": "PLAINTEXT"}

    # -- containers ----------------------------------------------------------------------------

    def containers(self, service: str, every: bool = False) -> list[str]:
        args = ["ps", "--filter", f"label={PROJECT_LABEL}={self.project.name}",
                "--filter", f"label={SERVICE_LABEL}={service}", "--format", "{{.Names}}"]
        return sorted(self.engine.podman(*(["ps", "-a", *args[1:]] if every else args)).stdout.split())

    def container(self, service: str) -> str:
        found = self.containers(service)
        assert len(found) == 1, f"expected one running {service} container, found {found}"
        return found[0]

    def exec(self, container: str, *command: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.engine.podman("exec", container, *command, check=check)

    def management(self, container: str, path: str) -> tuple[int, str]:
        result = self.exec(container, "python", "-c", MANAGEMENT_GET, path, check=False)
        if result.returncode != 0:
            return 0, result.stderr
        status, _, body = result.stdout.partition("\n")
        return int(status), body

    def metrics(self, container: str) -> dict[str, float]:
        status, body = self.management(container, "/metrics")
        assert status == 200, f"{container} /metrics: {status} {body[-300:]}"
        return {m.group(1): float(m.group(2)) for m in map(SAMPLE.match, body.splitlines()) if m}

    def ip(self, container: str) -> str:
        networks = self.engine.inspect(container)["NetworkSettings"]["Networks"]
        return next(iter(networks.values()))["IPAddress"]

    def running(self, container: str) -> bool:
        return self.engine.inspect(container)["State"]["Running"]

    def lb_log(self) -> list[tuple[float, str]]:
        """The load balancer's log lines, each with the time podman received it (epoch seconds)."""
        out = self.engine.podman("logs", "--timestamps", self.container("lb")).stdout
        lines = []
        for line in out.splitlines():
            stamp, _, text = line.partition(" ")
            lines.append((timestamp(stamp), text))
        return lines

    # -- readiness and clean-up ----------------------------------------------------------------

    def wait_ready(self, replicas: int, timeout: float = 120) -> None:
        """Every replica answers /readyz with 200 and the load balancer completes a TLS handshake
        with one of them."""
        deadline = time.monotonic() + timeout
        while True:
            bridges = self.containers("bridge")
            ready = len(bridges) == replicas and all(self.management(b, "/readyz")[0] == 200 for b in bridges)
            if ready and self.handshake():
                return
            if time.monotonic() > deadline:
                logs = {b: self.engine.podman("logs", "--tail", "20", b, check=False).stderr for b in bridges}
                raise RuntimeError(f"the compose project is not ready after {timeout:.0f}s: {bridges}\n{logs}")
            time.sleep(0.5)

    def handshake(self) -> bool:
        context = ssl.create_default_context(cafile=str(self.tls / "ca.pem"))
        try:
            with socket.create_connection(("127.0.0.1", self.push_port), timeout=3) as raw, \
                    context.wrap_socket(raw, server_hostname="localhost"):
                return True
        except OSError:
            return False

    def leftovers(self) -> dict[str, list[str]]:
        label = f"label={PROJECT_LABEL}={self.project.name}"
        found = {
            "containers": self.engine.podman("ps", "-a", "--filter", label, "--format", "{{.Names}}").stdout.split(),
            "volumes": self.engine.podman("volume", "ls", "--filter", label, "--format", "{{.Name}}").stdout.split(),
            "networks": self.engine.podman("network", "ls", "--filter", label, "--format", "{{.Name}}").stdout.split(),
        }
        return {kind: names for kind, names in found.items() if names}

    def down(self) -> None:
        """`compose down` with the project's volumes; fails when anything of the project remains."""
        self.engine.compose(self.project, "down", "--volumes", "--remove-orphans", "--timeout", "5", check=False)
        left = self.leftovers()
        if left:
            for name in left.get("containers", []):
                self.engine.podman("rm", "-f", "-t", "0", name, check=False)
            for kind in ("volume", "network"):
                if left.get(kind + "s"):
                    self.engine.podman(kind, "rm", "-f", *left[kind + "s"], check=False)
            raise AssertionError(f"compose down left these behind (now removed): {left}")


def timestamp(stamp: str) -> float:
    """podman's RFC 3339 log time stamps (nanoseconds) as epoch seconds."""
    match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$", stamp)
    if not match:
        return float("nan")
    zone = "+00:00" if match.group(3) == "Z" else match.group(3)
    fraction = (match.group(2) or "0")[:6].ljust(6, "0")
    return datetime.fromisoformat(f"{match.group(1)}.{fraction}{zone}").timestamp()
