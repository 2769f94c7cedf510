"""Two versions of the bridge and the Go reference, loaded in turn on one broker: CPU per push of each.

    python -m bench.ab --before REV [--rounds 3]

On a shared machine the bridge's CPU per push moves from run to run by more than a change to it
saves, so comparing two `make bench` runs says little. Here the bridge of git revision REV (checked
out once under .local/ab/REV), the bridge of this checkout and the Go reference receiver run side by
side, and each round loads them one after the other, at saturation and then at 1,000 pushes/s:
whatever else the machine does falls on all three alike. Prints each window, then per system the
median CPU per push and its ratio to the Go reference's.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
from pathlib import Path

from tests.support import ROOT

from .plan import BRIDGE, MODERATE_RATE, QUICK
from .runs import environment

LOADS = ("saturation", f"{MODERATE_RATE:.0f}/s")


def checkout(rev: str) -> Path:
    """A worktree of `rev` under .local/ab (made once, reused)."""
    commit = subprocess.run(["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout.strip()
    where = ROOT / ".local" / "ab" / commit[:12]
    if not where.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(where), commit], cwd=ROOT, check=True,
                       capture_output=True)
    return where


def us_per_push(result: dict) -> float:
    return float(result["server_cpu"]) * 1e6 / result["ok_per_s"] if result["ok_per_s"] else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="git revision of the bridge to compare with this checkout")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    before_root = checkout(args.before)
    figures: dict[tuple[str, str], list[float]] = {}
    with environment(QUICK, 64, 1, {}, False) as bench, contextlib.ExitStack() as running:
        pool = bench.bodies[(5, QUICK.pool_agents)]
        systems = {"before": running.enter_context(bench.group(BRIDGE, root=before_root)),
                   "after": running.enter_context(bench.group(BRIDGE)),
                   "go": running.enter_context(bench.go_reference())}
        print(f"bench.ab: warming the broker up for {QUICK.broker_warmup_s:g} s", flush=True)
        for name in ("before", "after"):
            bench.load(systems[name], pool, window_s=QUICK.broker_warmup_s / 2)
        for _ in range(args.rounds):
            for load in LOADS:
                for name, target in systems.items():
                    rate = None if load == "saturation" else MODERATE_RATE
                    result = bench.load(target, pool, rate=rate, window_s=None if rate is None else 5)
                    figures.setdefault((name, load), []).append(us_per_push(result))
                    p99 = (result.get("latency_ms") or {}).get("p99")
                    print(f"{name:7}{load:>12}{result['ok_per_s']:8.0f}/s{us_per_push(result):7.0f} us/push"
                          f"  p99 {p99:.1f} ms  other {result['other_cpu']:.2f} cores", flush=True)
    print(f"\nCPU per push, median of {args.rounds} rounds (before = {args.before}, after = this checkout):")
    for load in LOADS:
        go = statistics.median(figures[("go", load)])
        for name in systems:
            values = figures[(name, load)]
            median = statistics.median(values)
            print(f"  {load:>12} {name:7}{median:7.0f} us  ({', '.join(f'{v:.0f}' for v in values)})"
                  f"  /go {median / go:.2f}")


if __name__ == "__main__":
    main()
