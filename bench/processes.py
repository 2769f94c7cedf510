"""The processes a benchmark run measures, and what they use: CPU time and memory from /proc, the
servers started as groups of processes, the Go programs built on first use.

Every server is a Target: the URLs the load generator spreads its connections over, and the
processes whose CPU and memory count as the system measured.
"""
from __future__ import annotations

import hashlib
import os
import select
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Self

from tests.support import PUSH_PATH, ROOT, BridgeProcess, free_port

from .plan import NAIVE

CACHE = ROOT / ".local" / "bench"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads, in seconds (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def memory_mb(pids: list[int]) -> dict[str, float]:
    """Resident set size now and its high-water mark, in MB, summed over `pids` (/proc/PID/status)."""
    found = {"VmRSS": 0.0, "VmHWM": 0.0}
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                name, _, value = line.partition(":")
                if name in found:
                    found[name] += int(value.split()[0]) / 1024
        except OSError:
            pass
    return {"rss_mb": found["VmRSS"], "peak_mb": found["VmHWM"]}


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) CPU time of the whole machine, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    total = sum(values[:8])
    return total - idle, total


@dataclass
class Usage:
    """CPU used, in cores, by named groups of processes and by the whole machine, over a window."""

    groups: dict[str, list[int]]
    started: dict = field(default_factory=dict)

    def start(self) -> None:
        self.started = {name: sum(cpu_seconds(p) for p in pids) for name, pids in self.groups.items()}
        self.started["@machine"] = machine_jiffies()
        self.started["@time"] = time.monotonic()

    def stop(self) -> dict[str, float]:
        elapsed = time.monotonic() - self.started["@time"]
        used = {f"{name}_cpu": (sum(cpu_seconds(p) for p in pids) - self.started[name]) / elapsed
                for name, pids in self.groups.items()}
        busy, total = machine_jiffies()
        busy0, total0 = self.started["@machine"]
        used["machine_cpu"] = (busy - busy0) / max(1, total - total0) * NCPU
        return used


def stderr_lines(proc: subprocess.Popen, deadline: float) -> Iterator[str]:
    """The lines a child writes on stderr, as they come, until it closes it or `deadline`."""
    fd = proc.stderr.fileno()
    pending = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            return
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            yield line.decode(errors="replace").strip()


# --pin: the server measured gets core 0 to itself; this process, and so the broker and the
# generator it starts, keep to core 1. None: the scheduler places everything.
SERVER_CPUS: set[int] | None = None


def pin_servers() -> None:
    global SERVER_CPUS
    SERVER_CPUS = {0}
    os.sched_setaffinity(0, {1})


def server_affinity() -> None:
    if SERVER_CPUS is not None:
        os.sched_setaffinity(0, SERVER_CPUS)


class Target(Protocol):
    """What the generator is pointed at: the URLs it spreads its connections over, and the
    processes whose CPU and memory count as the system measured."""

    @property
    def urls(self) -> list[str]: ...

    @property
    def pids(self) -> list[int]: ...

    def memory(self) -> dict[str, float]: ...


class Group:
    """N processes of one Python server module, each on its own port; the generator spreads over them."""

    def __init__(self, module: str, env: dict[str, str], tls: Path, logs: Path, workers: int,
                 running: list, root: Path = ROOT) -> None:
        self.members = [BridgeProcess(env, tls, logs, module=module, preexec_fn=server_affinity, root=root)
                        for _ in range(workers)]
        # The bridge and the HTTP ceiling (the bridge's own serve()) have /readyz; the naive app not.
        self.has_readyz = module != NAIVE
        running.append(self)

    def __enter__(self) -> Self:
        for member in self.members:
            member.start(wait=False)
        for member in self.members:
            member.wait(ready=self.has_readyz)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        for member in self.members:
            member.stop()

    @property
    def urls(self) -> list[str]:
        return [m.url for m in self.members]

    @property
    def pids(self) -> list[int]:
        return [m.proc.pid for m in self.members]

    def memory(self) -> dict[str, float]:
        return memory_mb(self.pids)


class GoReceiver:
    """The Go reference receiver (bench/goref): one process on free ports, reading the same BRIDGE_*
    settings as the bridge; ready once its /readyz answers 200 (its producer reached the broker)."""

    def __init__(self, binary: Path, env: dict[str, str], logs: Path, running: list) -> None:
        self.binary = binary
        self.port, self.management_port = free_port(), free_port()
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}, **env,
                    "BRIDGE_PORT": str(self.port), "BRIDGE_MANAGEMENT_PORT": str(self.management_port)}
        self.log_path = logs / f"goref-{self.port}.log"
        self.proc: subprocess.Popen | None = None
        running.append(self)

    def __enter__(self) -> Self:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([str(self.binary)], env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, preexec_fn=server_affinity)
        deadline = time.monotonic() + 60
        while not self._ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the Go reference receiver did not become ready:\n{tail}")
            time.sleep(0.1)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.management_port}/readyz", timeout=2) as answer:
                return answer.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    @property
    def urls(self) -> list[str]:
        return [f"https://127.0.0.1:{self.port}{PUSH_PATH}"]

    @property
    def pids(self) -> list[int]:
        return [] if self.proc is None else [self.proc.pid]

    def memory(self) -> dict[str, float]:
        return memory_mb(self.pids)


def go_binary(source: Path) -> Path:
    """Build the Go program in `source` once per version of its files; cached under .local/bench.
    Its dependencies (go.sum) come through the Go module proxy on the first build. Raises
    RuntimeError saying why when it cannot be built."""
    files = sorted(p for p in source.iterdir() if p.suffix in (".go", ".mod", ".sum"))
    digest = hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in files)).hexdigest()[:12]
    binary = CACHE / f"{source.name}-{digest}"
    if binary.exists():
        return binary
    go = shutil.which("go")
    if go is None:
        raise RuntimeError(f"the Go toolchain (`go`) is needed to build {source.relative_to(ROOT)}")
    CACHE.mkdir(parents=True, exist_ok=True)
    print(f"bench: building {source.relative_to(ROOT)} ...", flush=True)
    partial = binary.with_suffix(".partial")
    env = {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=readonly", "CGO_ENABLED": "0"}
    built = subprocess.run([go, "build", "-trimpath", "-o", str(partial), "."], cwd=source, env=env,
                           capture_output=True, text=True)
    if built.returncode != 0:
        raise RuntimeError(f"building {source.relative_to(ROOT)} failed:\n{built.stderr[-2000:]}")
    partial.rename(binary)
    for old in CACHE.glob(f"{source.name}-*"):
        if old != binary:
            old.unlink(missing_ok=True)
    return binary
