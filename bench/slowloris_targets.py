"""The targets of bench.slowloris: a local bridge, the shipped router on loopback in front of
bridges, or the compose project's router in the container test's podman; and what their processes
use (memory, open files, CPU, the kernel's accept-queue overflows), read from /proc and the cgroup."""
from __future__ import annotations

import argparse
import contextlib
import os
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import BridgeProcess, Broker, Router, make_tls

from . import TOKEN

# -- what the target's processes use ----------------------------------------------------------------

def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpu_s(pid: int) -> float:
    """CPU time (user + system) the process has used, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_of(pids: list[int]) -> float:
    """CPU seconds of those of `pids` that still run."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += cpu_s(pid)
    return total


def machine_busy_s() -> float:
    """CPU time the whole machine has spent busy (all cores, /proc/stat), in seconds."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def cgroup_memory(pid: int, name: str = "memory.usage_in_bytes") -> float | None:
    """A file of the process' memory cgroup (v1; memory.current under v2) in MB, when readable."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        base = Path("/sys/fs/cgroup/memory") if "memory" in controllers.split(",") else \
            Path("/sys/fs/cgroup") if controllers == "" else None
        if base is None:
            continue
        file = base / path.lstrip("/") / (name if controllers else name.replace("usage_in_bytes", "current"))
        with contextlib.suppress(OSError, ValueError):
            return int(file.read_text()) / 2**20
    return None


def listen_overflows(pid: int) -> int:
    """TcpExt ListenOverflows of the process' network namespace: connections the kernel dropped
    because the listening socket's accept queue was full."""
    lines = [line.split() for line in Path(f"/proc/{pid}/net/netstat").read_text().splitlines()
             if line.startswith("TcpExt:")]
    return int(dict(zip(lines[0], lines[1], strict=True)).get("ListenOverflows", 0))


@dataclass
class Target:
    """What is attacked: its push URL and port, the processes that hold its connections (`pids()`,
    whose first is the one whose network namespace counts), and its own counters."""

    name: str
    url: str
    port: int
    cafile: str
    token: str
    pids: Callable[[], list[int]]
    counters: Callable[[], dict[str, float]]
    other_pids: dict[str, int] = field(default_factory=dict)  # Kafka, the replicas: CPU only
    memory_limit_mb: float | None = None


# -- the targets ------------------------------------------------------------------------------------

def prometheus(text: str, wanted: tuple[str, ...], histograms: tuple[str, ...] = ()) -> dict[str, float]:
    """The samples of `text` whose names start with one of `wanted` (those not 0), and for each of
    `histograms` the share of observations within 0.1, 0.5 and 1 s."""
    found, buckets = {}, {}
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if line.startswith(wanted) and "_created" not in line:
            with contextlib.suppress(ValueError):
                if float(value):
                    found[name] = float(value)
        for histogram in histograms:
            if line.startswith(histogram + "_bucket"):
                buckets[(histogram, float(name.partition('le="')[2].rstrip('"}')))] = float(value)
    for (histogram, bound), count in buckets.items():
        if bound in (0.1, 0.5, 1.0):
            found[f"{histogram}: share within {bound:g} s"] = count / (buckets.get((histogram, float("inf"))) or 1.0)
    return found


BRIDGE_COUNTERS = ("bridge_connections_", "bridge_pushes_total", "bridge_pushes_rejected_total")
# The bridge's own answer times (request head to answer) and, of those, Kafka's acknowledgements.
BRIDGE_HISTOGRAMS = ("bridge_push_duration_seconds", "bridge_kafka_publish_duration_seconds")
ROUTER_COUNTERS = ('haproxy_frontend_max_sessions{proxy="push"}', 'haproxy_frontend_connections_total{proxy="push"}',
                   'haproxy_frontend_limit_sessions{proxy="push"}', 'haproxy_frontend_request_errors_total{proxy="push"}',
                   'haproxy_frontend_http_requests_total{proxy="push"}',
                   'haproxy_backend_connection_errors_total{proxy="bridges"}')


@contextlib.contextmanager
def local_target(args: argparse.Namespace, work: Path, bridge_setup: Callable[[], int]) -> Iterator[Target]:
    """A local Kafka and bridges; with --target router, the shipped router in front of them."""
    tls = make_tls(work / "tls")
    broker = Broker(work / "kafka", tls).start()
    env = {**broker.bridge_env(), "BRIDGE_TOPIC": "bench.slowloris", "BRIDGE_SERVICE_TOKENS": TOKEN,
           "BRIDGE_CREATE_TOPICS": "true", **dict(pair.split("=", 1) for pair in args.bridge_env)}
    replicas = args.replicas if args.target == "router" else 1
    bridges = [BridgeProcess({**env, "BRIDGE_REPLICA_NAME": f"replica-{n}"}, tls, preexec_fn=bridge_setup)
               for n in range(1, replicas + 1)]
    router: Router | None = None
    try:
        for bridge in bridges:
            bridge.start(work)
        others = {"kafka": broker.pid or 0}

        def bridge_counters() -> dict[str, float]:
            with urllib.request.urlopen(bridges[0].management_url + "/metrics", timeout=5) as response:
                return prometheus(response.read().decode(), BRIDGE_COUNTERS, BRIDGE_HISTOGRAMS)

        if args.target == "bridge":
            yield Target("bridge", bridges[0].url, bridges[0].port, str(tls / "ca.pem"), TOKEN,
                         lambda: [bridges[0].proc.pid], bridge_counters, others)
            return
        router = Router(bridges, tls, work).start()
        yield Target("router", router.url, router.port, str(tls / "ca.pem"), TOKEN, lambda: [router.proc.pid],
                     lambda: prometheus(router.metrics(), ROUTER_COUNTERS),
                     {**others, **{f"replica {n}": b.proc.pid for n, b in enumerate(bridges, 1)}})
    finally:
        if router is not None:
            router.stop()
        for bridge in bridges:
            bridge.stop()
        broker.stop()


@contextlib.contextmanager
def compose_target(work: Path) -> Iterator[Target]:
    """The compose project in the container test's podman, attacked on the router's published port."""
    from tests.container.project import compose_stack, running_engine

    with running_engine(work / "engine") as engine, compose_stack(engine, work / "project") as stack:
        router = stack.container("router")
        master = engine.inspect(router)["State"]["Pid"]
        limit = engine.inspect(router)["HostConfig"].get("Memory") or 0
        bridge = stack.containers("bridge")[0]

        def counters() -> dict[str, float]:
            status, body = stack.management(bridge, "/metrics", host="router")
            return prometheus(body, ROUTER_COUNTERS) if status == 200 else {}

        yield Target("router", stack.push_url, stack.push_port, str(stack.tls / "ca.pem"), stack.token,
                     lambda: [master, *children(master)], counters,
                     {f"replica {n}": engine.inspect(c)["State"]["Pid"]
                      for n, c in enumerate(stack.containers("bridge"), 1)},
                     limit / 2**20 or None)
