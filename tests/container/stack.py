"""One running compose project of the container test, and what the tests ask of it: its
containers by service, commands inside them, the management endpoints of the bridges and of the
router (reached from inside a bridge container, since those ports are published nowhere), the
router's log (which replica served which push, hashed on which agent), which replica a record
came from, and clean-up of everything the project created."""
from __future__ import annotations

import re
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from tests.support import PUSH_PATH, ROUTER_LINE, RouterRequest

from .engine import Engine, Project

REPLICAS = 3  # bridge replicas the project runs with (scenarios may add one for a while)
PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
# GET a URL from inside a bridge container (its management port, or the router's on the compose
# network); prints the status, then the body.
MANAGEMENT_GET = """
import sys, urllib.error, urllib.request
try:
    answer = urllib.request.urlopen(sys.argv[1], timeout=5)
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

    def management(self, container: str, path: str, host: str = "127.0.0.1") -> tuple[int, str]:
        """GET `path` of the management port (8081) of `host` as seen from inside `container` (a
        bridge): its own by default, or the router's (host "router")."""
        result = self.exec(container, "python", "-c", MANAGEMENT_GET, f"http://{host}:8081{path}", check=False)
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

    # -- the router ----------------------------------------------------------------------------

    def router_log(self) -> list[tuple[float, str]]:
        """The router's log lines, each with the time podman received it (epoch seconds)."""
        out = self.engine.podman("logs", "--timestamps", self.container("router")).stdout
        lines = []
        for line in out.splitlines():
            stamp, _, text = line.partition(" ")
            lines.append((timestamp(stamp), text))
        return lines

    def router_requests(self) -> list[tuple[float, RouterRequest]]:
        """Every request the router logged (time podman received the line, the request): which
        replica's server served it, hashed on which agent, over which client connection."""
        found = []
        for at, text in self.router_log():
            match = ROUTER_LINE.match(text)
            if match:
                found.append((at, RouterRequest.of(match)))
        return found

    def server_of(self, container: str) -> str:
        """The router's server for a bridge container: <project>-bridge-N is bridgeN, always."""
        match = re.fullmatch(rf"{re.escape(self.project.name)}-bridge-(\d+)", container)
        assert match, f"{container} is not a replica of the bridge service"
        return f"bridge{match.group(1)}"

    def router_states(self) -> dict[str, str]:
        """server -> UP, DOWN, MAINT ... as the router sees its servers now (its /metrics, asked
        from inside a bridge container); {} when it cannot be asked."""
        bridges = self.containers("bridge")
        if not bridges:
            return {}
        status, body = self.management(bridges[0], "/metrics", host="router")
        if status != 200:
            return {}
        pattern = re.compile(r'^haproxy_server_status\{proxy="bridges",server="([^"]+)",state="(\w+)"\} 1$', re.M)
        return dict(pattern.findall(body))

    def replicas_by_name(self) -> dict[str, str]:
        """The `bridge_replica` header a record carries (the replica's host name, which podman sets
        to the container's short id) -> the bridge container that accepted its push."""
        return {self.engine.inspect(c)["Config"]["Hostname"]: c for c in self.containers("bridge", every=True)}

    # -- readiness and clean-up ----------------------------------------------------------------

    def wait_ready(self, replicas: int, timeout: float = 120) -> None:
        """Every replica answers /readyz with 200, the router takes each of them (its server UP),
        and the router completes a TLS handshake on the published port."""
        deadline = time.monotonic() + timeout
        while True:
            bridges = self.containers("bridge")
            ready = len(bridges) == replicas and all(self.management(b, "/readyz")[0] == 200 for b in bridges)
            routed = ready and all(self.router_states().get(self.server_of(b)) == "UP" for b in bridges)
            if routed and self.handshake():
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
