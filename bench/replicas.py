"""Replicas behind the router: 1, 2, 3 ... bridges behind the shipped agent-affine router, in one run.

    python -m bench.replicas [--replicas 1,2,3] [--quick] [--conns N] [--json FILE] [--keep]

Also the last table of `make bench`. The router is deploy/compose/router.cfg as shipped, run by the
Router harness of tests/support/router.py (addresses and certificate paths made local). Generator and bodies
are the benchmark's: 5-event pushes of 1,000 distinct agents in turn. Per replica count: saturation
through the router (pushes/s, CPU per push of the replicas and of the router), then one rate for
every count (half the first count's saturation, open loop) whose p50 and p99 are compared with that
rate sent straight to replica 1. At both, the router's CPU per push over a replica's (issue 24: at most
a quarter), and p99 through the router at that half rate (under 10 ms). Replicas are added one by
one; each count has a fresh router. The table itself is bench/replicas_report.py.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import signal
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from tests.support import PUSH_PATH, ROUTER_LINE, BridgeProcess, Router

from .plan import FULL, QUICK
from .processes import memory_mb
from .replicas_report import report
from .runs import Bench, environment, machine

Figures = dict[str, Any]  # what Bench.load returns, and the results built from it
MAX_REPLICAS = 16  # the server lines of router.cfg
OK_PUSHES = re.compile(r'^bridge_pushes_total\{retcode="0"\} (\S+)$', re.M)
LOG_DATE = "%d/%b/%Y:%H:%M:%S.%f"  # %tr


def parse_counts(text: str | None, quick: bool) -> list[int]:
    """--replicas: "1,2,3" -> [1, 2, 3]; None -> the default (1,2 for a quick run); "none" -> []."""
    if text is None or text.strip().lower() == "none":
        return ([1, 2] if quick else [1, 2, 3]) if text is None else []
    counts = sorted({int(part) for part in text.split(",") if part.strip().isdigit()})
    if not counts or counts[0] < 1 or counts[-1] > MAX_REPLICAS or len(counts) != len(set(text.split(","))):
        raise SystemExit(f"--replicas takes counts from 1 to {MAX_REPLICAS} such as 1,2,3 (or none), not {text!r}")
    return counts


@dataclass
class Routed:
    """The generator's target: the router's URL in front of `replicas`, or with no router the first
    replica's own URL. The replicas are the system measured (their CPU is `server_cpu`)."""

    replicas: list[BridgeProcess]
    router: Router | None = None

    @property
    def urls(self) -> list[str]:
        return [self.router.url if self.router else self.replicas[0].url]

    @property
    def pids(self) -> list[int]:
        return [r.proc.pid for r in self.replicas if r.proc is not None]

    def memory(self) -> dict[str, float]:
        return memory_mb(self.pids)


def pushes_ok(replica: BridgeProcess) -> float:
    """The pushes this replica answered "0" so far, from its management port's /metrics."""
    with urllib.request.urlopen(replica.management_url + "/metrics", timeout=5) as response:
        found = OK_PUSHES.search(response.read().decode())
    return float(found.group(1)) if found else 0.0


def router_log(router: Router, skip: int = 0, since: datetime | None = None) -> Figures:
    """The router's log lines of pushes (one per request, as router.cfg writes them) after the first
    `skip`: how many carried a workNo key, over how many agents, how many agents reached more than one
    replica (a push without a key is spread round robin, so the shares alone do not show the hash at
    work); and per push from `since` (local time, as the log's), in whole ms, the replica's answer time
    as the router saw it (%Tr) and the router's own time (%Ta - %Tr: reading, connecting, relaying)."""
    lines = [line for line in router.log().splitlines() if PUSH_PATH in line]
    servers: dict[str, set[str]] = {}
    replica: list[int] = []
    own: list[int] = []
    no_key = 0
    for line in lines[skip:]:
        request = ROUTER_LINE.match(line)
        if request and request["key"]:
            servers.setdefault(request["key"], set()).add(request["server"])
        else:
            no_key += 1
        if request and (since is None or datetime.strptime(request["date"], LOG_DATE) >= since):
            answered, total = map(int, request["timers"].split("/")[3:5])  # %Tr, %Ta of %TR/%Tw/%Tc/%Tr/%Ta
            replica.append(answered)
            own.append(total - answered)
    return {"lines": len(lines), "logged": len(lines) - skip, "no_key": no_key, "agents": len(servers),
            "agents_on_several": sum(len(s) > 1 for s in servers.values()),
            "replica_ms": percentiles(replica), "own_ms": percentiles(own)}


def percentiles(values: list[int]) -> dict[str, float]:
    ordered = sorted(values) or [0]
    return {"p50": ordered[len(ordered) // 2], "p99": ordered[int(0.99 * (len(ordered) - 1))],
            "mean": sum(ordered) / len(ordered)}


@dataclass
class Through:
    """Loads through the router. Counts the pushes each replica answered "0" meanwhile (replica 1 also
    takes the straight runs, left out of its share) and reads each load's lines of the router's log."""

    bench: Bench
    routed: Routed
    body_file: Path
    taken: list[float] = dataclasses.field(default_factory=list)
    logged: int = 0

    def __call__(self, rate: float | None = None, window_s: float | None = None) -> Figures:
        router = self.routed.router
        assert router is not None and router.proc is not None
        before = [pushes_ok(r) for r in self.routed.replicas]
        since = datetime.now() + timedelta(seconds=self.bench.plan.warmup_s)  # the generator's window
        result = self.bench.load(self.routed, self.body_file, rate=rate, window_s=window_s,
                                 also={"router": [router.proc.pid]})
        after = [pushes_ok(r) for r in self.routed.replicas]
        self.taken = [t + a - b for t, a, b in zip(self.taken or [0.0] * len(after), after, before, strict=True)]
        result["router_log"] = router_log(router, self.logged, since)
        self.logged = result["router_log"]["lines"]
        return result


def measure(bench: Bench, counts: list[int], body_file: Path, *, warm: bool = False,
            step: Callable[[str], None] = lambda text: print(f"bench: replicas: {text}", flush=True)) -> Figures:
    """Every row of the table, for `counts` replicas behind the router (see the module's text).
    `warm`: the broker has taken load already (in `make bench`), so no uncounted warm-up window."""
    plan = bench.plan
    results: Figures = {"counts": {}, "direct": {}, "rate": None, "conns": bench.conns, "events": 5}
    replicas: list[BridgeProcess] = []
    try:
        for n in counts:
            while len(replicas) < n:
                env = {**bench.env, "BRIDGE_REPLICA_NAME": f"replica-{len(replicas) + 1}"}
                replicas.append(BridgeProcess(env, bench.tls, bench.logs).start())
            router = Router(replicas[:n], bench.tls, bench.logs)
            try:
                router.start()
                routed = Routed(replicas[:n], router)
                through = Through(bench, routed, body_file)
                row: Figures = {}
                if results["rate"] is None:
                    if not warm:  # the broker's JVM compiles its hot paths under its first load: not counted
                        step(f"{n} behind the router, warming up (not counted)")
                        through(window_s=3 * plan.window_s)
                    step("one bridge straight, no router, saturation")
                    results["direct"]["saturation"] = bench.load(Routed(replicas[:1]), body_file)
                step(f"{n} behind the router, saturation")
                row["saturation"] = through()
                if results["rate"] is None:
                    results["rate"] = row["saturation"]["ok_per_s"] / 2
                    step(f"one bridge straight, no router, {results['rate']:.0f} pushes/s")
                    results["direct"]["rate"] = bench.load(Routed(replicas[:1]), body_file, rate=results["rate"],
                                                           window_s=plan.latency_window_s)
                step(f"{n} behind the router, {results['rate']:.0f} pushes/s")
                row["rate"] = through(rate=results["rate"], window_s=plan.latency_window_s)
                row["shares"] = [t / (sum(through.taken) or 1.0) for t in through.taken]
                row["affinity"] = {**router_log(router), "answered": sum(through.taken)}
                results["counts"][str(n)] = row
            finally:
                router.stop()
        if results["rate"]:  # once more, last: how far the same run moves within this run (noise)
            step(f"one bridge straight, no router, {results['rate']:.0f} pushes/s, again")
            results["direct"]["rate_again"] = bench.load(Routed(replicas[:1]), body_file, rate=results["rate"],
                                                         window_s=plan.latency_window_s)
    finally:
        for replica in replicas:
            replica.stop()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.replicas", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", metavar="1,2,3", help="replica counts (default 1,2,3; 1,2 with --quick)")
    parser.add_argument("--quick", action="store_true", help="short windows (the benchmark's --quick)")
    parser.add_argument("--conns", type=int, default=64, help="generator connections (in-flight pushes)")
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    parser.add_argument("--keep", action="store_true", help="keep the logs (replicas, router, broker)")
    args = parser.parse_args(argv)
    counts = parse_counts(args.replicas, args.quick)
    if not counts:
        parser.error("--replicas: nothing to measure")
    plan = dataclasses.replace(QUICK if args.quick else FULL, mixes=(5,), agent_counts=(), sweep_conns=())
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    loadavg = " ".join(f"{v:.2f}" for v in os.getloadavg())
    try:
        with environment(plan, args.conns, 1, {}, args.keep) as bench:
            results = measure(bench, counts, bench.bodies[(5, plan.pool_agents)])
            results["machine"] = machine(args.quick, loadavg, started)
    except RuntimeError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    head = results["machine"]
    print(f"\n{report(results, args.conns)}\n\n(load average before: {head['loadavg_before']}, "
          f"after: {head['loadavg_after']}; run took {head['seconds']} s)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
