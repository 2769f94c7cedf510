"""Replicas behind the router: 1, 2, 3 ... bridges behind the shipped agent-affine router, in one run.

    python -m bench.replicas [--replicas 1,2,3] [--quick] [--conns N] [--json FILE] [--keep]

Also the last table of `make bench`. The router is deploy/compose/router.cfg as shipped, run by the
Router harness of tests/support/router.py (addresses and certificate paths made local). Generator and bodies
are the benchmark's: 5-event pushes of 1,000 distinct agents in turn. Per replica count: saturation
through the router (pushes/s, CPU per push of the replicas and of the router), then one rate for
every count (half the first count's saturation, open loop) whose p50 and p99 are compared with that
rate sent straight to replica 1. Replicas are added one by one; each count has a fresh router.
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

from .benchmark import FULL, NCPU, QUICK, Bench, cores, environment, machine, memory_mb, ms

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
        per = [memory_mb(pid) for pid in self.pids]
        return {"rss_mb": sum(m["rss_mb"] for m in per), "peak_mb": sum(m["peak_mb"] for m in per)}


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


def us(r: Figures, key: str) -> str:
    """CPU microseconds per push of the processes behind `key` (cores / pushes per second)."""
    return "-" if r.get(key) is None or not r.get("ok_per_s") else f"{r[key] / r['ok_per_s'] * 1e6:.0f}"


def report(results: Figures, conns: int) -> str:
    counts = [int(n) for n in results["counts"]]
    rows, direct = results["counts"], results["direct"]
    if not counts:
        return "Replicas behind the router: not measured"
    first = rows[str(counts[0])]["saturation"]["ok_per_s"]
    lines = [f"Replicas behind the router ({results['events']} ev/push, the shipped router.cfg on loopback, "
             f"{conns} generator connections, {NCPU} CPUs shared by everything)",
             "CPU us/push: CPU microseconds per push of the replicas (all together) and of the router process. "
             "Cores: over the window.",
             "",
             f"{'saturation':<24}{'pushes/s':>9}{f'vs {counts[0]}':>7}{'errors':>7}{'rep us':>8}{'rtr us':>8}"
             f"{'rep':>6}{'router':>7}{'kafka':>6}{'gen':>6}{'other':>6}  share of each replica"]

    def saturation(name: str, r: Figures, shares: list[float] | None) -> str:
        share = " / ".join(f"{s:.0%}" for s in shares) if shares else "-"
        return (f"{name:<24}{r['ok_per_s']:>9.0f}{r['ok_per_s'] / first:>7.2f}{r.get('errors', 0):>7}"
                f"{us(r, 'server_cpu'):>8}{us(r, 'router_cpu'):>8}"
                f"{cores(r.get('server_cpu')):>6}{cores(r.get('router_cpu')):>7}{cores(r.get('broker_cpu')):>6}"
                f"{cores(r.get('gen_cpu')):>6}{cores(r.get('other_cpu')):>6}  {share}")

    if direct.get("saturation"):
        lines.append(saturation("1 bridge, no router", direct["saturation"], None))
    for n in counts:
        lines.append(saturation(f"{n} behind the router", rows[str(n)]["saturation"], rows[str(n)]["shares"]))
    base = direct.get("rate") or {}
    base_lat = base.get("latency_ms") or {}
    rate = f"@ {results['rate']:.0f} pushes/s"
    lines += ["", f"{rate:<24}{'answered':>9}{'errors':>7}{'p50 ms':>8}{'p99 ms':>8}{'+p50':>7}{'+p99':>7}"
                  f"{'rep us':>8}{'rtr us':>8}{'other':>6}{'Tr p50':>8}{'Tr p99':>7}{'own ms':>7}{'own p99':>8}"]

    def at_rate(name: str, r: Figures) -> str:
        lat, log = r.get("latency_ms") or {}, r.get("router_log") or {}
        added = [lat[k] - base_lat[k] if r is not base and k in lat and k in base_lat else None
                 for k in ("p50", "p99")]
        replica, own = log.get("replica_ms") or {}, log.get("own_ms") or {}
        return (f"{name:<24}{r['ok_per_s']:>9.0f}{r.get('errors', 0):>7}{ms(lat, 'p50'):>8}{ms(lat, 'p99'):>8}"
                + "".join("      -" if a is None else f"{a:>+7.1f}" for a in added)
                + f"{us(r, 'server_cpu'):>8}{us(r, 'router_cpu'):>8}"
                  f"{cores(r.get('other_cpu')):>6}{ms(replica, 'p50'):>8}{ms(replica, 'p99'):>7}"
                  f"{ms(own, 'mean'):>7}{ms(own, 'p99'):>8}")

    if base:
        lines.append(at_rate("1 bridge, no router", base))
    for n in counts:
        lines.append(at_rate(f"{n} behind the router", rows[str(n)]["rate"]))
    if direct.get("rate_again"):
        lines.append(at_rate("1 bridge, no router, last", direct["rate_again"]))
    lines.append("")
    lines.append(f"Rate: half the saturation through the router with {counts[0]} replica(s), the same for every row; "
                 "+p50/+p99: ms added compared with the same rate sent straight to one bridge (the first such row). "
                 "The last row repeats that straight run at the end: its +p50/+p99 is how much the same "
                 "measurement moved within this run. From the router's log, whole ms: Tr = the replica's answer "
                 "time as the router saw it; own = the router's own time per push (%Ta - %Tr), mean and p99.")
    if direct.get("saturation"):
        lines.append(f"Throughput through the router with {counts[0]}, relative to the same bridge straight: "
                     f"{first / direct['saturation']['ok_per_s']:.2f}.")
    missing = [n for n in counts if min(rows[str(n)]["shares"]) <= 0]
    lines.append("Every replica took a share of the pushes (its bridge_pushes_total)." if not missing else
                 f"MISSED: with {missing} replicas some replica took no push; the router did not spread the agents.")
    for n in counts:
        a = rows[str(n)]["affinity"]
        lines.append(f"  router log, {n} replica(s): {a['logged']:,} pushes logged (of {a['answered']:,.0f} "
                     f"answered), {a['no_key']} without a workNo key, {a['agents']:,} agents, "
                     f"{a['agents_on_several']} of them on more than one replica")
    runs = [(f"straight {kind}", r) for kind, r in direct.items()] + [
        (f"{n} replicas {kind}", rows[str(n)][kind]) for n in counts for kind in ("saturation", "rate")]
    for name, r in runs:
        if r.get("errors") or r.get("dropped"):
            lines.append(f"  {name}: {r.get('errors_by') or r.get('errors')}, {r.get('dropped', 0)} never sent; "
                         f"first: {r.get('first_error', '')[:160]}")
    others = [r["other_cpu"] for _, r in runs if r.get("other_cpu") is not None]
    if others:
        lines.append(f"Noise: the rest of the machine used {sum(others) / len(others):.2f} cores on average "
                     f"(at most {max(others):.2f}) during these windows.")
    lines.append(
        f"What {NCPU} cores can show: replicas, router, broker and generator all share them. One bridge (one Python "
        "process) uses at most one core, so a second replica can take part of what the others leave of the "
        "other core; a third has nothing left to take. The rows show what the router costs (CPU per push, "
        "latency at the same rate) and that spreading agents over replicas does not collapse throughput, not how "
        "far replicas scale with cores of their own.")
    return "\n".join(lines)


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
