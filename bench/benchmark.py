"""The benchmark: the bridge against its own ceilings, measured in one run on this machine.

    python -m bench.benchmark [--quick] [--profile] [--workers N] [--conns N] [--replicas 1,2,3]
                              [--json FILE] [--keep]

It starts everything it needs and stops it again: TLS material and a real single-node Kafka
broker (mutual TLS, as the integration tests use it) in a temporary directory on free loopback
ports, and each server as its own process. Every HTTP system is loaded by the same compiled load
generator (bench/loadgen, built with Go on first use and cached in .local/bench) with the same
push bodies (bench/events.py), over HTTPS with keep-alive:

  bridge            `python -m bridge serve`, the real thing
  HTTP ceiling      the same uvicorn config, app and logging, with a publisher that takes the
                    records and sends nothing (python -m bench.http_ceiling)
  producer ceiling  the bridge's Publisher sending the same records straight to the broker,
                    no HTTP (python -m bench.producer_ceiling)
  combined ceiling  1 / (1/HTTP + 1/producer): both halves' cost paid by one process
  naive receiver    Starlette + json + one send_and_wait per event (python -m bench.naive_app)

Saturation (closed loop, --conns connections) gives pushes/s and events/s of each, for pushes
of 5, 1 and 50 events. For the bridge also: latency at a fixed offered load of half its
saturation (open loop; a push that waits for a free connection counts the wait), with the two
ceilings at that same load to split the latency into its HTTP and Kafka shares; bridge and naive
at 16 and 256 connections; throughput and memory with 10, 1,000 and 100,000 distinct agents;
with --profile, where the saturated bridge spends its time (py-spy); last, 1, 2 and 3 replicas behind
the shipped agent-affine router (bench/replicas.py, --replicas). Alongside each figure it
reports the CPU used, in cores, by the server, the broker, the load generator and everything
else on the machine, because on a shared 2-core machine those decide what the figures mean.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import select
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Self

from tests.support import ROOT, BridgeProcess, Broker, free_port, make_tls

from .events import write_bodies

CACHE = ROOT / ".local" / "bench"
LOADGEN_SRC = ROOT / "bench" / "loadgen"
TOKEN = "bench-token"
GUID = "279fe21d-1b2c-4d3e-9f00-aabbccddeeff.AgentGateway1"
TOPIC = "bench.agent.events"
BRIDGE = "bridge serve"  # python -m bridge serve
NAIVE = "bench.naive_app"
PARTITIONS = 12  # the bridge's default for topics it creates
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1

TARGETS = {  # for 5-event pushes
    "bridge/combined": 0.9,
    "bridge/naive": 1.5,
    "bridge/naive per CPU-second": 1.5,
    "bridge/naive at 8 connections": 1.5,
    "p50 bridge/naive @ same load": 1.0,   # below: a ratio under 1
    "p99 bridge/naive @ same load": 1.0,
    "rss_100k_mb": 150.0,
    "agents_100k/10": 0.9,
    "spooling/direct": 1.0,
    "drain/50%": 5.0,
}


@dataclass(frozen=True)
class Plan:
    mixes: tuple[int, ...]  # events per push; the first one is the one the targets are about
    warmup_s: float
    window_s: float
    latency_window_s: float
    agent_counts: tuple[int, ...]
    agents_max_window_s: float  # the 100,000-agent run grows up to this to reach every agent
    pool_agents: int  # distinct agents in the bodies of the throughput and latency runs
    sweep_conns: tuple[int, ...] = ()  # other connection counts for bridge and naive (first mix)
    sweep_window_s: float = 5


FULL = Plan(mixes=(5, 1, 50), warmup_s=2, window_s=8, latency_window_s=10,
            agent_counts=(10, 1_000, 100_000), agents_max_window_s=90, pool_agents=1_000,
            sweep_conns=(8, 16, 256), sweep_window_s=4)
QUICK = Plan(mixes=(5,), warmup_s=1, window_s=4, latency_window_s=5,
             agent_counts=(10, 1_000, 100_000), agents_max_window_s=4, pool_agents=1_000, sweep_conns=(8,),
             sweep_window_s=4)


# ---------------------------------------------------------------------------------------------
# Processes and what they use


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads, in seconds (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def memory_mb(pid: int) -> dict[str, float]:
    """Resident set size now and its high-water mark, in MB (from /proc/PID/status)."""
    found = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                found[name] = int(value.split()[0]) / 1024
    except OSError:
        pass
    return {"rss_mb": found.get("VmRSS", 0.0), "peak_mb": found.get("VmHWM", 0.0)}


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


def stderr_lines(proc: subprocess.Popen, deadline: float):
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


class Group:
    """N processes of one server module, each on its own port; the generator spreads over them."""

    def __init__(self, module: str, env: dict[str, str], tls: Path, logs: Path, workers: int,
                 running: list[Group]) -> None:
        self.members = [BridgeProcess(env, tls, logs, module=module, preexec_fn=server_affinity)
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

    def __exit__(self, *exc) -> None:
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
        per = [memory_mb(pid) for pid in self.pids]
        return {"rss_mb": sum(m["rss_mb"] for m in per), "peak_mb": sum(m["peak_mb"] for m in per)}


class Target(Protocol):
    """What the generator is pointed at: the URLs it spreads its connections over, and the
    processes whose CPU and memory count as the system measured (a Group, or replicas behind a router)."""

    @property
    def urls(self) -> list[str]: ...

    @property
    def pids(self) -> list[int]: ...

    def memory(self) -> dict[str, float]: ...


# ---------------------------------------------------------------------------------------------
# The load generator


# --pin: the server measured gets core 0 to itself; this process, and so the broker and the
# generator it starts, keep to core 1. None: the scheduler places everything.
SERVER_CPUS: set[int] | None = None


def server_affinity() -> None:
    if SERVER_CPUS is not None:
        os.sched_setaffinity(0, SERVER_CPUS)


def loadgen_binary() -> Path:
    """Build bench/loadgen once per version of its source; cached under .local/bench."""
    sources = sorted(p for p in LOADGEN_SRC.iterdir() if p.suffix in (".go", ".mod"))
    digest = hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in sources)).hexdigest()[:12]
    binary = CACHE / f"loadgen-{digest}"
    if binary.exists():
        return binary
    go = shutil.which("go")
    if go is None:
        raise SystemExit("bench: the Go toolchain (`go`) is needed to build the load generator in bench/loadgen")
    CACHE.mkdir(parents=True, exist_ok=True)
    print("bench: building the load generator (bench/loadgen) ...", flush=True)
    partial = binary.with_suffix(".partial")
    env = {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod", "CGO_ENABLED": "0"}
    subprocess.run([go, "build", "-trimpath", "-o", str(partial), "."], cwd=LOADGEN_SRC, env=env, check=True)
    partial.rename(binary)
    for old in CACHE.glob("loadgen-*"):
        if old != binary:
            old.unlink(missing_ok=True)
    return binary


@dataclass
class Bench:
    plan: Plan
    loadgen: Path
    tls: Path
    conns: int
    workers: int
    env: dict[str, str]
    logs: Path
    bodies: dict[tuple[int, int], Path]  # (events per push, agents) -> file
    broker: Broker
    running: list[Group] = field(default_factory=list)

    @property
    def broker_pids(self) -> list[int]:
        """The broker's process (none while it is stopped): read when a load starts, so a restart
        needs no bookkeeping."""
        pid = self.broker.pid
        return [] if pid is None else [pid]

    def group(self, module: str) -> Group:
        return Group(module, self.env, self.tls, self.logs, self.workers, self.running)

    def load(self, target: Target, body_file: Path, *, rate: float | None = None,
             window_s: float | None = None, conns: int | None = None, cover_up_to_s: float | None = None,
             also: dict[str, list[int]] | None = None) -> dict:
        """Run the generator against `target`; return its figures plus the CPU used over its window.

        `cover_up_to_s`: let the window grow (up to that long) until every body was sent once.
        `also`: other processes whose CPU to report, as `<name>_cpu` (a router, say)."""
        window_s = window_s or self.plan.window_s
        warmup_s = self.plan.warmup_s
        command = [str(self.loadgen), "-cacert", str(self.tls / "ca.pem"),
                   "-H", "Content-Type: application/json; charset=UTF-8", "-H", f"Guid: {GUID}",
                   "-H", f"service_token: {TOKEN}", "-bodies", str(body_file),
                   "-conns", str(conns or self.conns), "-warmup", f"{warmup_s}s", "-duration", f"{window_s}s"]
        for url in target.urls:
            command += ["-url", url]
        if rate:
            command += ["-rate", f"{rate:.1f}"]
        if cover_up_to_s:
            command += ["-cover", "-max-duration", f"{cover_up_to_s}s"]
        generator = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        usage = Usage({"server": target.pids, "broker": self.broker_pids, **(also or {})})
        used: dict = {}
        other_lines = []
        # The generator announces its window on stderr; sample the other processes' CPU then.
        deadline = time.monotonic() + warmup_s + max(window_s, cover_up_to_s or 0) + 60
        for line in stderr_lines(generator, deadline):
            if line == "window start":
                usage.start()
            elif line == "window end" and usage.started:
                used = usage.stop()
                break
            else:
                other_lines.append(line)
        try:
            out, err = generator.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            generator.kill()
            out, err = generator.communicate()
        if generator.returncode != 0 or not used:
            problem = "\n".join(other_lines) + err.decode(errors="replace")
            raise RuntimeError(f"load generator failed ({generator.returncode}): {problem[-2000:]}")
        result = json.loads(out)
        result.update(used, gen_cpu=result["cpu_cores"], **target.memory())
        result["other_cpu"] = max(0.0, used["machine_cpu"] - result["gen_cpu"]
                                  - sum(v for k, v in used.items() if k != "machine_cpu"))
        return result

    def producer_ceiling(self, body_file: Path, rate: float | None = None, window_s: float | None = None) -> dict:
        """Run N bench.producer_ceiling processes at once and add their figures up."""
        window_s = window_s or self.plan.window_s
        per_process = max(1, self.conns // self.workers)
        env = {**self.env, "BRIDGE_PORT": str(free_port()), "BRIDGE_MANAGEMENT_PORT": str(free_port())}
        command = [sys.executable, "-m", "bench.producer_ceiling", "--bodies", str(body_file),
                   "--concurrency", str(per_process), "--warmup", str(self.plan.warmup_s),
                   "--duration", str(window_s)]
        if rate:
            command += ["--rate", f"{rate / self.workers:.1f}"]
        procs = [subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  preexec_fn=server_affinity)
                 for _ in range(self.workers)]
        # Each process says "started" once connected, when its warm-up begins.
        deadline = time.monotonic() + 60
        for proc in procs:
            with selectors.DefaultSelector() as selector:
                selector.register(proc.stdout, selectors.EVENT_READ)
                if not selector.select(max(0.0, deadline - time.monotonic())):
                    break
                proc.stdout.readline()
        usage = Usage({"server": [p.pid for p in procs], "broker": self.broker_pids})
        time.sleep(self.plan.warmup_s)
        usage.start()
        time.sleep(window_s)
        used = usage.stop()
        results = []
        for proc in procs:
            try:
                out, err = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
            if proc.returncode != 0:
                raise RuntimeError(f"producer ceiling failed ({proc.returncode}): {err.decode()[-2000:]}")
            results.append(json.loads(out.strip().splitlines()[-1]))
        total = {key: sum(r[key] for r in results) for key in ("pushes", "events", "errors", "cpu_s")}
        # One process: its percentiles; several: the worst of each (they cannot be merged exactly).
        latency = {key: max(r["latency_ms"].get(key, 0) for r in results) for key in results[0]["latency_ms"]}
        total.update(used, ok_per_s=total["pushes"] / window_s, events_per_s=total["events"] / window_s,
                     gen_cpu=None, server_cpu=total["cpu_s"] / window_s, latency_ms=latency, rss_mb=None,
                     rate=rate)
        total["other_cpu"] = max(0.0, used["machine_cpu"] - total["server_cpu"] - used["broker_cpu"])
        return total


# ---------------------------------------------------------------------------------------------
# Kafka and TLS


async def create_topic(bootstrap: str, tls: Path) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.helpers import create_ssl_context

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, security_protocol="SSL",
                                ssl_context=create_ssl_context(cafile=tls / "ca.pem", certfile=tls / "server.pem",
                                                               keyfile=tls / "server.key"))
    await admin.start()
    try:
        await admin.create_topics([NewTopic(TOPIC, PARTITIONS, 1)])
    finally:
        await admin.close()


# ---------------------------------------------------------------------------------------------
# Profile


def profile_bridge(bench: Bench, body_file: Path, out: Path) -> dict:
    """py-spy samples the bridge (first worker) while it is saturated with the same pushes.

    Native frames are included (uvloop, TLS, the interpreter's GC, system calls), so time spent
    outside Python code is attributed too. py-spy pauses the process for each sample, so the
    throughput of this run is a little lower than the measured one and is not used elsewhere."""
    py_spy = Path(sys.executable).parent / "py-spy"
    if not py_spy.exists():
        found = shutil.which("py-spy")
        if found is None:
            return {"error": "py-spy is not installed (pip install py-spy)"}
        py_spy = Path(found)
    with bench.group(BRIDGE) as bridge:
        sampler = subprocess.Popen(
            [str(py_spy), "record", "--pid", str(bridge.pids[0]), "--rate", "100", "--native", "--function",
             "--duration", str(int(bench.plan.warmup_s + bench.plan.window_s)), "--format", "raw",
             "--output", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        result = bench.load(bridge, body_file)
        try:
            _, err = sampler.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            sampler.kill()
            _, err = sampler.communicate()
    if not out.exists():
        return {"error": f"py-spy wrote nothing: {err.decode(errors='replace')[-500:]}"}
    return {"load": result, **summarise_profile(out)}


PROFILE_AREAS = (  # by the innermost Python frame of a sample: (path fragment, area)
    ("bridge/logs.py", "logging (one JSON line per push)"),
    ("logging/", "logging (one JSON line per push)"),
    ("prometheus_client/", "metrics (prometheus_client)"),
    ("aiokafka/", "Kafka client (aiokafka)"),
    ("uvicorn/", "HTTP server (uvicorn, incl. socket writes)"),
    ("starlette/", "Starlette routing"),
    ("bridge/", "bridge/ code itself"),
    ("asyncio/runners.py", "event loop, TLS, socket reads (uvloop, native)"),
    ("asyncio/", "asyncio (tasks, futures, timeouts)"),
    ("contextlib.py", "contextlib (async with)"),
)


def python_frame(frame: str) -> bool:
    return ".py:" in frame or ".py)" in frame


def summarise_profile(raw: Path) -> dict:
    """From py-spy's raw stacks ('frame;frame;... count', outermost first): where the time goes.

    - areas: each sample goes to the area of its innermost Python frame (native code such as a
      system call counts for the Python code that called it), except that the interpreter's
      cyclic garbage collector is its own area wherever it was triggered;
    - self: the innermost frame of each sample, native or Python;
    - bridge_inclusive: each bridge/ function with everything it calls."""
    own: Counter = Counter()
    areas: Counter = Counter()
    inclusive: Counter = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        own[frames[-1]] += n
        if any(f.startswith("gc_collect") for f in frames):
            areas["Python garbage collector (gc)"] += n
        else:
            innermost = next((f for f in reversed(frames) if python_frame(f)), "")
            areas[next((area for fragment, area in PROFILE_AREAS if fragment in innermost), "other")] += n
        for frame in set(frames):
            if "(bridge/" in frame and "(bridge/__main__.py" not in frame:
                inclusive[frame] += n
    if total == 0:
        return {"samples": 0}

    def share(counter: Counter, top: int) -> list[tuple[str, float]]:
        return [(name, 100.0 * n / total) for name, n in counter.most_common(top)]

    return {"samples": total, "areas": share(areas, 12), "self": share(own, 15),
            "bridge_inclusive": share(inclusive, 15)}


# ---------------------------------------------------------------------------------------------
# Report


def ms(latency: dict, key: str) -> str:
    value = latency.get(key)
    return "-" if value is None else f"{value:.1f}" if value < 100 else f"{value:.0f}"


def cores(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def row(name: str, events: int, r: dict | None) -> str:
    if r is None:
        return f"{name:<26}{events:>4}  (not measured)"
    lat = r.get("latency_ms") or {}
    rss = r.get("rss_mb")
    return (f"{name:<26}{events:>4}{r['ok_per_s']:>10.0f}{r['ok_per_s'] * events:>10.0f}{r.get('errors', 0):>7}"
            f"{ms(lat, 'p50'):>8}{ms(lat, 'p99'):>8}{ms(lat, 'p99.9'):>8}"
            f"{cores(r.get('server_cpu')):>7}{cores(r.get('broker_cpu')):>7}{cores(r.get('gen_cpu')):>7}"
            f"{cores(r.get('other_cpu')):>7}{'-' if rss is None else f'{rss:.0f}':>7}")


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def per_cpu_second(r: dict | None) -> float | None:
    """Pushes served per CPU-second of the server process(es)."""
    return ratio(r and r["ok_per_s"], r and r.get("server_cpu"))


def all_runs(results: dict):
    """(name, figures) of every measured run."""
    for events, runs in results["mixes"].items():
        for name, r in runs.items():
            yield f"{name} ({events} ev/push)", r
    for system, runs in results.get("sweep", {}).items():
        for conns, r in runs.items():
            yield f"{system} with {conns} connections", r
    for count, r in results["agents"].items():
        yield f"bridge with {int(count):,} agents", r
    if (results.get("profile") or {}).get("load"):
        yield "profiled bridge", results["profile"]["load"]


def report(results: dict, plan: Plan, workers: int, conns: int) -> str:
    lines = []
    head = results["machine"]
    lines.append(f"cc-gateway-bridge benchmark ({'quick' if head['quick'] else 'full'} run, {head['cpus']} CPUs, "
                 f"load average before start {head['loadavg_before']}, bridge workers: {workers}, "
                 f"generator connections: {conns})")
    lines.append("Saturation: closed loop (each connection sends again as soon as answered); latency there is "
                 "informative only.")
    lines.append("'@ 50%': open loop at half the bridge's saturation pushes/s (no coordinated omission: a push waits for a "
                 "free connection if the server is slow, and that wait counts).")
    lines.append("CPU columns are cores used over the window: srv = the system measured, kafka = the broker, "
                 "gen = load generator, other = the rest of the machine (other users: noise).")
    lines.append("")
    lines.append(f"{'system':<26}{'ev':>4}{'pushes/s':>10}{'events/s':>10}{'errors':>7}{'p50ms':>8}{'p99ms':>8}"
                 f"{'p99.9ms':>8}{'srv':>7}{'kafka':>7}{'gen':>7}{'other':>7}{'RSS MB':>7}")
    ratios = {}
    for events in plan.mixes:
        m = results["mixes"][str(events)]
        http, producer = m.get("http_ceiling"), m.get("producer_ceiling")
        combined = None
        if http and producer and http["ok_per_s"] and producer["ok_per_s"]:
            combined = 1 / (1 / http["ok_per_s"] + 1 / producer["ok_per_s"])
        lines.append(row("bridge (saturation)", events, m.get("bridge")))
        lines.append(row("bridge @ 50% load", events, m.get("bridge_half")))
        lines.append(row("HTTP ceiling (no Kafka)", events, http))
        if m.get("http_half"):
            lines.append(row("HTTP ceiling @ same load", events, m.get("http_half")))
        lines.append(row("producer ceiling (no HTTP)", events, producer))
        if m.get("producer_half"):
            lines.append(row("producer @ same load", events, m.get("producer_half")))
        lines.append(f"{'combined ceiling':<26}{events:>4}" + (
            f"{combined:>10.0f}{combined * events:>10.0f}" if combined else "         -"))
        lines.append(row("naive receiver", events, m.get("naive")))
        if m.get("naive_half"):
            lines.append(row("naive @ bridge's 50% load", events, m.get("naive_half")))
        lines.append("")
        bridge = (m.get("bridge") or {}).get("ok_per_s")
        ratios[events] = {
            "bridge/HTTP": ratio(bridge, http and http["ok_per_s"]),
            "bridge/producer": ratio(bridge, producer and producer["ok_per_s"]),
            "bridge/combined": ratio(bridge, combined),
            "bridge/naive": ratio(bridge, (m.get("naive") or {}).get("ok_per_s")),
            "bridge/naive per CPU-second": ratio(per_cpu_second(m.get("bridge")), per_cpu_second(m.get("naive"))),
        }
    results["ratios"] = ratios
    spool = results.get("spool") or {}
    first_mix = plan.mixes[0]
    if spool:
        lines.append(row("spooling (Kafka down)", first_mix, spool.get("spooling")))
        lines.append(row("@ 50% while draining", first_mix, spool.get("draining")))
        drain = spool.get("drain") or {}
        if drain.get("per_s"):
            lines.append(f"Drain with no load: {drain['entries']} spooled pushes; the first delivered "
                         f"{drain['reconnect_s']:.1f} s after the broker was back (health check and reconnection), "
                         f"the rest at {drain['per_s']:.0f} pushes/s. The row above: a 50% load while a backlog of "
                         f"{(spool.get('draining') or {}).get('backlog', '-')} pushes drained.")
        lines.append("")
    for events in plan.mixes:
        half = results["mixes"][str(events)].get("bridge_half")
        if half:
            lines.append(f"@ 50% load, {events} ev/push: offered {half['rate']:.0f} pushes/s, answered "
                         f"{half['ok_per_s']:.0f}/s on {half['conns']} connections. Included in its latency: waiting "
                         f"for a free connection, p99 {ms(half.get('wait_ms') or {}, 'p99')} ms. Not included: the "
                         f"generator's own lateness, p99 {ms(half.get('late_ms') or {}, 'p99')} ms (counted from "
                         f"the due time, p99 would be {ms(half.get('from_due_ms') or {}, 'p99')} ms).")
            if half.get("dropped"):
                lines.append(f"  {half['dropped']} pushes were never sent: the generator's queue was full")
    lines.append("")
    lines.append("Ratios of pushes/s " + "".join(f"{f'{e} ev/push':>12}" for e in plan.mixes) + "   target (5 ev/push)")
    for name in ("bridge/HTTP", "bridge/producer", "bridge/combined", "bridge/naive", "bridge/naive per CPU-second"):
        target = TARGETS.get(name)
        values = "".join(f"{'-' if ratios[e][name] is None else f'{ratios[e][name]:.2f}':>12}" for e in plan.mixes)
        lines.append(f"  {name:<17}{values}   {'>= ' + format(target, 'g') if target else ''}")
    lines.append("")

    sweep = results.get("sweep") or {}
    if plan.sweep_conns and sweep.get("bridge"):
        first_mix = str(plan.mixes[0])
        main = {"bridge": results["mixes"][first_mix].get("bridge"), "naive": results["mixes"][first_mix].get("naive")}
        lines.append(f"Concurrency check ({first_mix} ev/push, saturation; {conns} connections is the main figure):")
        lines.append(f"{'connections':>12}{'bridge/s':>10}{'p50 ms':>8}{'naive/s':>10}{'p50 ms':>8}{'bridge/naive':>14}")
        for c in sorted({*plan.sweep_conns, conns}):
            b = main["bridge"] if c == conns else sweep["bridge"].get(str(c))
            n = main["naive"] if c == conns else sweep["naive"].get(str(c))
            r = ratio(b and b["ok_per_s"], n and n["ok_per_s"])
            lines.append(f"{c:>12}{(b or {}).get('ok_per_s', 0):>10.0f}{ms((b or {}).get('latency_ms') or {}, 'p50'):>8}"
                         f"{(n or {}).get('ok_per_s', 0):>10.0f}{ms((n or {}).get('latency_ms') or {}, 'p50'):>8}"
                         f"{'-' if r is None else f'{r:.2f}':>14}")
        lines.append("")

    agents = results["agents"]
    lines.append("Distinct agents (5 ev/push, saturation, a fresh bridge each):")
    lines.append(f"{'agents':>10}{'reached':>10}{'window s':>10}{'pushes/s':>10}{'events/s':>10}{'errors':>7}"
                 f"{'srv':>7}{'kafka':>7}{'gen':>7}{'other':>7}{'RSS MB':>8}{'peak MB':>8}")
    for count in plan.agent_counts:
        a = agents.get(str(count))
        if a is None:
            continue
        lines.append(f"{count:>10}{a['bodies_used']:>10}{a['window_s']:>10.0f}{a['ok_per_s']:>10.0f}"
                     f"{a['ok_per_s'] * 5:>10.0f}{a['errors']:>7}{cores(a['server_cpu']):>7}"
                     f"{cores(a['broker_cpu']):>7}{cores(a['gen_cpu']):>7}{cores(a['other_cpu']):>7}"
                     f"{a['rss_mb']:>8.0f}{a['peak_mb']:>8.0f}")
    lines.append("")

    first = str(plan.mixes[0])
    half = results["mixes"][first].get("bridge_half") or {}
    few, many = agents.get(str(min(plan.agent_counts))), agents.get(str(max(plan.agent_counts)))
    naive_half = results["mixes"][first].get("naive_half") or {}
    eight_bridge, eight_naive = ((results.get("sweep") or {}).get(s, {}).get("8") for s in ("bridge", "naive"))
    checks = [
        ("bridge/combined ceiling", ratios[int(first)]["bridge/combined"], ">=", TARGETS["bridge/combined"], ""),
        ("bridge/naive, pushes/s", ratios[int(first)]["bridge/naive"], ">=", TARGETS["bridge/naive"], ""),
        ("bridge/naive, pushes per CPU-second", ratios[int(first)]["bridge/naive per CPU-second"], ">=",
         TARGETS["bridge/naive per CPU-second"], ""),
        ("bridge/naive, pushes/s at 8 connections", ratio(eight_bridge and eight_bridge["ok_per_s"],
                                                          eight_naive and eight_naive["ok_per_s"]), ">=",
         TARGETS["bridge/naive at 8 connections"], ""),
        ("p50 @ 50% load, bridge/naive", ratio((half.get("latency_ms") or {}).get("p50"),
                                               (naive_half.get("latency_ms") or {}).get("p50")), "<",
         TARGETS["p50 bridge/naive @ same load"], ""),
        ("p99 @ 50% load, bridge/naive", ratio((half.get("latency_ms") or {}).get("p99"),
                                               (naive_half.get("latency_ms") or {}).get("p99")), "<",
         TARGETS["p99 bridge/naive @ same load"], ""),
        (f"RSS with {max(plan.agent_counts):,} agents (peak)", many and many["peak_mb"], "<=",
         TARGETS["rss_100k_mb"], " MB"),
        (f"pushes/s {max(plan.agent_counts):,} agents / {min(plan.agent_counts)} agents",
         ratio(many and many["ok_per_s"], few and few["ok_per_s"]), ">=", TARGETS["agents_100k/10"], ""),
        ("spooling pushes/s / direct pushes/s", ratio((spool.get("spooling") or {}).get("ok_per_s"),
                                                      (results["mixes"][first].get("bridge") or {}).get("ok_per_s")),
         ">=", TARGETS["spooling/direct"], ""),
        ("drain pushes/s / 50% load pushes/s", ratio((spool.get("drain") or {}).get("per_s"), half.get("rate")),
         ">=", TARGETS["drain/50%"], ""),
    ]
    lines.append(f"Targets ({first} events/push, one run on this machine; see the CPU columns before trusting a miss):")
    for name, value, op, target, unit in checks:
        if value is None:
            verdict, shown = "not measured", "-"
        else:
            met = {">=": value >= target, "<=": value <= target, "<": value < target}[op]
            verdict, shown = ("met" if met else "MISSED"), f"{value:.2f}{unit}"
        lines.append(f"  {name:<40}{shown:>12}  target {op} {target:g}{unit}  {verdict}")
    if many and many["bodies_used"] < max(plan.agent_counts):
        lines.append(f"  note: this run reached {many['bodies_used']:,} of {max(plan.agent_counts):,} agents "
                     "(a full run grows that window until every agent was sent)")
    for name, r in all_runs(results):
        if r.get("errors"):
            lines.append(f"  errors in {name}: {r.get('errors_by') or r['errors']}; first: {r.get('first_error', '')[:200]}")
        if r.get("unfinished"):
            lines.append(f"  {name}: {r['unfinished']} generator connections still waiting for an answer at the end "
                         "(left out of the figures)")
    others = [r["other_cpu"] for _, r in all_runs(results) if r.get("other_cpu") is not None]
    if others:
        lines.append(f"Noise: the rest of the machine used {sum(others) / len(others):.2f} cores on average "
                     f"(at most {max(others):.2f}) during the windows; above ~0.2 the figures move from run to run.")
    gen = [r["gen_cpu"] for _, r in all_runs(results) if r.get("gen_cpu") is not None]
    if gen:
        lines.append(f"Load generator CPU: {min(gen):.2f} to {max(gen):.2f} cores over the windows "
                     f"(of {NCPU}); the bridge at saturation used "
                     f"{cores((results['mixes'][first].get('bridge') or {}).get('server_cpu'))} cores.")

    profile = results.get("profile")
    if profile and profile.get("samples"):
        lines.append("")
        load = profile.get("load") or {}
        lines.append(f"Profile of the bridge at saturation ({first} ev/push, {load.get('ok_per_s', 0):.0f} pushes/s "
                     f"while sampled; py-spy --native, {profile['samples']} samples of busy time; "
                     f"raw stacks in {profile['file']}):")
        lines.append("  by area (the innermost Python frame of each sample):")
        lines.extend(f"    {share:5.1f}%  {name}" for name, share in profile["areas"])
        lines.append("  functions by own time (innermost frame, native or Python):")
        lines.extend(f"    {share:5.1f}%  {name}" for name, share in profile["self"])
        lines.append("  bridge functions by inclusive time:")
        lines.extend(f"    {share:5.1f}%  {name}" for name, share in profile["bridge_inclusive"])
    elif profile:
        lines.append(f"Profile: {profile.get('error', 'no samples')}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The run


def wait_mode(bridge: Group, mode: str, timeout_s: float = 300.0) -> tuple[float, dict]:
    """Poll the first member's /readyz until it reports `mode`; (seconds it took, last body)."""
    started = time.monotonic()
    while (info := bridge.members[0].readiness()).get("mode") != mode:
        if time.monotonic() - started > timeout_s:
            raise RuntimeError(f"the bridge did not reach mode {mode!r} in {timeout_s:.0f} s: {info}")
        time.sleep(0.05)
    return time.monotonic() - started, info


def watch_drain(bridge: Group, backlog: int, timeout_s: float = 300.0) -> dict:
    """From the broker's restart: how long until the first spooled push is delivered (the bridge
    notices Kafka and reconnects), then the drain rate until the spool is empty."""
    started = time.monotonic()
    first: tuple[float, int] | None = None
    while (info := bridge.members[0].readiness()).get("mode") != "direct":
        entries = (info.get("spool") or {}).get("entries", backlog)
        if first is None and entries < backlog:
            first = (time.monotonic(), entries)
        if time.monotonic() - started > timeout_s:
            raise RuntimeError(f"the spool was not drained in {timeout_s:.0f} s: {info}")
        time.sleep(0.02)
    ended = time.monotonic()
    if first is None:  # drained between two looks
        first = (ended, 0)
    took = ended - first[0]
    return {"entries": backlog, "reconnect_s": first[0] - started, "seconds": took,
            "per_s": first[1] / took if took > 0 else None}  # what was left once delivery began


def measure_spool(bench: Bench, body_file: Path, half_rate: float) -> dict:
    """Outage mode: saturation while Kafka is down (every push spooled), the drain rate once it is
    back with no load, and a 50% load while a backlog drains."""
    spooled: dict = {}
    broker = bench.broker

    env = {**bench.env, "BRIDGE_SPOOL_DIR": str(bench.logs.parent / "spool")}
    with Group(BRIDGE, env, bench.tls, bench.logs, 1, bench.running) as bridge:
        print("bench: spool: Kafka stopped, bridge at saturation (every push spooled)", flush=True)
        broker.stop()
        wait_mode(bridge, "spooling")
        spooled["spooling"] = bench.load(bridge, body_file)
        backlog = bridge.members[0].readiness()["spool"]["entries"]
        print(f"bench: spool: Kafka back, draining {backlog} pushes with no load", flush=True)
        broker.start()
        spooled["drain"] = watch_drain(bridge, backlog)
        if half_rate > 0:
            print(f"bench: spool: Kafka stopped, {half_rate:.0f} pushes/s for {bench.plan.latency_window_s:g} s",
                  flush=True)
            broker.stop()
            wait_mode(bridge, "spooling")
            bench.load(bridge, body_file, rate=half_rate, window_s=bench.plan.latency_window_s)
            backlog = bridge.members[0].readiness()["spool"]["entries"]
            print(f"bench: spool: Kafka back, {half_rate:.0f} pushes/s while {backlog} pushes drain", flush=True)
            broker.start()
            spooled["draining"] = bench.load(bridge, body_file, rate=half_rate, window_s=bench.plan.latency_window_s)
            _took, _ = wait_mode(bridge, "direct")
            spooled["draining"]["backlog"] = backlog
    return spooled


def measure(bench: Bench, profile: bool) -> dict:
    plan = bench.plan
    results: dict = {"mixes": {str(e): {} for e in plan.mixes}, "agents": {}, "sweep": {"bridge": {}, "naive": {}}}

    def step(text: str) -> None:
        print(f"bench: {text}", flush=True)

    pool = {e: bench.bodies[(e, plan.pool_agents)] for e in plan.mixes}

    with bench.group(BRIDGE) as bridge:
        # The broker's JVM compiles its hot paths during its first seconds of load: not counted.
        step("warming up the broker and the bridge (not counted)")
        bench.load(bridge, pool[plan.mixes[0]], window_s=plan.window_s)
        for events in plan.mixes:
            step(f"bridge, {events} events/push, saturation")
            results["mixes"][str(events)]["bridge"] = bench.load(bridge, pool[events])
        for events in plan.mixes:
            saturation = results["mixes"][str(events)]["bridge"]["ok_per_s"]
            if saturation <= 0:
                continue
            step(f"bridge, {events} events/push, {saturation / 2:.0f} pushes/s (50% load), latency")
            half = bench.load(bridge, pool[events], rate=saturation / 2, window_s=plan.latency_window_s)
            results["mixes"][str(events)]["bridge_half"] = half
        for conns in plan.sweep_conns:
            step(f"bridge, {plan.mixes[0]} events/push, saturation with {conns} connections")
            results["sweep"]["bridge"][str(conns)] = bench.load(bridge, pool[plan.mixes[0]], conns=conns,
                                                                window_s=plan.sweep_window_s)

    for count in plan.agent_counts:
        # Long enough that every agent's push is sent at least once (bounded by the plan).
        cover = plan.agents_max_window_s if plan.agents_max_window_s > plan.window_s else None
        step(f"bridge, {count:,} distinct agents" + (f", until each was sent (at most {cover:.0f} s)" if cover else ""))
        with bench.group(BRIDGE) as bridge:
            results["agents"][str(count)] = bench.load(bridge, bench.bodies[(5, count)], cover_up_to_s=cover)

    first = plan.mixes[0]
    half_rate = results["mixes"][str(first)]["bridge"]["ok_per_s"] / 2
    results["spool"] = measure_spool(bench, pool[first], half_rate)
    with bench.group("bench.http_ceiling") as http:
        for events in plan.mixes:
            step(f"HTTP ceiling, {events} events/push")
            results["mixes"][str(events)]["http_ceiling"] = bench.load(http, pool[events])
        if half_rate > 0:  # the same offered load as the bridge's latency run: the HTTP share of it
            step(f"HTTP ceiling, {first} events/push, {half_rate:.0f} pushes/s, latency")
            results["mixes"][str(first)]["http_half"] = bench.load(http, pool[first], rate=half_rate,
                                                                   window_s=plan.latency_window_s)

    for events in plan.mixes:
        step(f"producer ceiling, {events} events/push")
        results["mixes"][str(events)]["producer_ceiling"] = bench.producer_ceiling(pool[events])
    if half_rate > 0:  # and the Kafka share of it
        step(f"producer ceiling, {first} events/push, {half_rate:.0f} pushes/s, latency")
        results["mixes"][str(first)]["producer_half"] = bench.producer_ceiling(
            pool[first], rate=half_rate, window_s=plan.latency_window_s)

    with bench.group(NAIVE) as naive:
        for events in plan.mixes:
            step(f"naive receiver, {events} events/push")
            results["mixes"][str(events)]["naive"] = bench.load(naive, pool[events])
        if half_rate > 0:  # the bridge's 50% load, offered to the naive receiver: latency compared
            step(f"naive receiver, {first} events/push, {half_rate:.0f} pushes/s, latency")
            results["mixes"][str(first)]["naive_half"] = bench.load(naive, pool[first], rate=half_rate,
                                                                  window_s=plan.latency_window_s)
        for conns in plan.sweep_conns:
            step(f"naive receiver, {plan.mixes[0]} events/push, saturation with {conns} connections")
            results["sweep"]["naive"][str(conns)] = bench.load(naive, pool[plan.mixes[0]], conns=conns,
                                                               window_s=plan.sweep_window_s)

    if profile:
        step("profile of the bridge (py-spy)")
        out = CACHE / f"profile-{time.strftime('%Y%m%d-%H%M%S')}.txt"
        results["profile"] = {"file": str(out.relative_to(ROOT)),
                              **profile_bridge(bench, pool[plan.mixes[0]], out)}
    return results


@contextmanager
def environment(plan: Plan, conns: int, workers: int, extra: dict[str, str], keep: bool) -> Iterator[Bench]:
    """Everything a run needs, started here and stopped again on the way out: the load generator
    (built if need be), TLS material, the broker and its topic, the push bodies of `plan`, the
    servers' settings (plus `extra`). The broker is `bench.broker`."""
    loadgen = loadgen_binary()
    workdir = Path(tempfile.mkdtemp(prefix="cc-bridge-bench-"))
    tls = make_tls(workdir / "tls")
    broker = Broker(workdir / "kafka", tls)
    bench: Bench | None = None
    try:
        print("bench: starting Kafka ...", flush=True)
        broker.start()
        asyncio.run(create_topic(broker.bootstrap, tls))
        bodies_dir = workdir / "bodies"
        bodies_dir.mkdir()
        bodies = {}
        for events, agents in {*((e, plan.pool_agents) for e in plan.mixes), *((5, n) for n in plan.agent_counts)}:
            bodies[(events, agents)] = bodies_dir / f"e{events}-a{agents}.jsonl"
            write_bodies(bodies[(events, agents)], agents, events)
        env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
        env.update(
            broker.bridge_env(), BRIDGE_TLS_CERTFILE=str(tls / "server.pem"),
            BRIDGE_TLS_KEYFILE=str(tls / "server.key"), BRIDGE_HOST="127.0.0.1", BRIDGE_TOPIC=TOPIC,
            BRIDGE_SERVICE_TOKENS=TOKEN, BRIDGE_CREATE_TOPICS="true", BRIDGE_TOPIC_PARTITIONS=str(PARTITIONS),
        )
        env.update(extra)
        logs = workdir / "logs"
        logs.mkdir()
        bench = Bench(plan, loadgen, tls, conns, workers, env, logs, bodies, broker)
        yield bench
    finally:
        if bench is not None:
            for group in bench.running:
                group.stop()
        broker.stop()
        if keep:
            print(f"bench: logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def machine(quick: bool, loadavg: str, started: float) -> dict:
    """The machine and the run, for the report's heading and the JSON."""
    return {"quick": quick, "cpus": NCPU, "loadavg_before": loadavg,
            "loadavg_after": " ".join(f"{v:.2f}" for v in os.getloadavg()),
            "python": sys.version.split()[0], "seconds": round(time.monotonic() - started)}


def main(argv: list[str] | None = None) -> int:
    from . import replicas  # it imports this module

    parser = argparse.ArgumentParser(prog="python -m bench.benchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 5-event pushes only, short windows")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes per server (each on its own port; the generator spreads over them)")
    parser.add_argument("--conns", type=int, default=64, help="generator connections (in-flight pushes)")
    parser.add_argument("--profile", action="store_true", help="also sample the saturated bridge with py-spy")
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary directory (server and broker logs) instead of removing it")
    parser.add_argument("--pin", action="store_true",
                        help="give the measured server core 0 alone; broker and generator share core 1")
    parser.add_argument("--bridge-env", action="append", default=[], metavar="BRIDGE_X=VALUE",
                        help="an extra setting for every server measured, e.g. BRIDGE_ATOMIC_PUSHES=true (repeatable)")
    parser.add_argument("--replicas", metavar="1,2,3",
                        help="replica counts measured behind the shipped router (default 1,2,3; 1,2 with --quick; "
                             "'none' to leave the table out)")
    args = parser.parse_args(argv)
    extra = dict(item.split("=", 1) for item in args.bridge_env if "=" in item)
    if any(not name.startswith("BRIDGE_") for name in extra) or len(extra) != len(args.bridge_env):
        parser.error("--bridge-env takes BRIDGE_NAME=VALUE")
    if args.workers < 1 or args.conns < args.workers:
        parser.error("--workers must be at least 1 and --conns at least --workers")
    plan = QUICK if args.quick else FULL
    if args.pin:
        if NCPU < 2 or args.workers != 1:
            parser.error("--pin needs 2 cores and --workers 1")
        global SERVER_CPUS
        SERVER_CPUS = {0}
        os.sched_setaffinity(0, {1})
    counts = replicas.parse_counts(args.replicas, args.quick)
    if counts and args.pin:
        print("bench: --pin measures one process; the replica table is left out", flush=True)
        counts = []
    # A SIGTERM (make interrupted, CI time-out) unwinds through the finally blocks below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    loadavg = " ".join(f"{v:.2f}" for v in os.getloadavg())
    try:
        with environment(plan, args.conns, args.workers, extra, args.keep) as bench:
            results = measure(bench, args.profile)
            if counts:
                results["replicas"] = replicas.measure(bench, counts, bench.bodies[(plan.mixes[0], plan.pool_agents)],
                                                       warm=True)
            results["machine"] = machine(args.quick, loadavg, started)
            text = report(results, plan, args.workers, args.conns)
            if counts:
                text += "\n\n" + replicas.report(results["replicas"], bench.conns)
            print()
            print(text)
            print(f"\n(load average after: {results['machine']['loadavg_after']}; "
                  f"run took {results['machine']['seconds']} s)")
            if args.json:
                args.json.write_text(json.dumps(results, indent=2, default=str))
            return 0
    except RuntimeError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
