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
  Go reference      the same push contract in Go, net/http + franz-go (bench/goref, built like the
                    load generator): a floor for CPU per push, with no spool, metrics or logs

Saturation (closed loop, --conns connections) gives pushes/s and events/s of each, for pushes
of 5, 1 and 50 events. For the bridge also: latency at a fixed offered load of half its
saturation (open loop; a push that waits for a free connection counts the wait), with the two
ceilings at that same load to split the latency into its HTTP and Kafka shares; CPU per push at
saturation and at a moderate rate (1,000 pushes/s of 1,000 agents, open loop) for the bridge, the
ceilings and the Go reference, and their bridge/Go ratios; bridge and naive at other connection
counts; throughput and memory with 10, 1,000 and 100,000 distinct agents; the outage spool; with
--profile, where the bridge spends its time at both loads (py-spy); last, 1, 2 and 3 replicas
behind the shipped agent-affine router (bench/replicas.py, --replicas). Alongside each figure it
reports the CPU used, in cores, by the server, the broker, the load generator and everything
else on the machine, because on a shared 2-core machine those decide what the figures mean.

The parts: bench/plan.py (what is measured, the targets), bench/processes.py (the processes and
their CPU), bench/runs.py (a run's world and one load), bench/measure.py (the order of the loads),
bench/profile.py, and the report in bench/report.py, bench/cpu_report.py, bench/replicas_report.py.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from . import replicas
from .cpu_report import cpu_report
from .measure import measure
from .plan import FULL, QUICK
from .processes import NCPU, pin_servers
from .report import report
from .runs import environment, machine


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.benchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 5-event pushes only, short windows")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes per server (each on its own port; the generator spreads over them)")
    parser.add_argument("--conns", type=int, default=64, help="generator connections (in-flight pushes)")
    parser.add_argument("--profile", action="store_true",
                        help="also sample the bridge with py-spy, at saturation and at the moderate rate")
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
        pin_servers()
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
            text = report(results, plan, args.workers, args.conns) + "\n\n" + cpu_report(results, plan)
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
