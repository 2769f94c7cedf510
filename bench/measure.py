"""The measurement plan of `make bench`: which loads, on which systems, in which order.

Every figure the report prints comes from here, in one run: saturation of each system for each
mix, the bridge's 50% load with the ceilings at that same load, the moderate rate (1,000 pushes/s
of 1,000 agents, open loop) on the bridge, the ceilings and the Go reference, the connection sweep,
the distinct-agent runs, the outage spool, and with --profile the bridge sampled at saturation
and at the moderate rate.
"""
from __future__ import annotations

import time
from pathlib import Path

from .plan import BRIDGE, HTTP_CEILING, MODERATE_RATE, NAIVE
from .processes import CACHE, ROOT, Group
from .profile import profile_bridge
from .runs import Bench


def step(text: str) -> None:
    print(f"bench: {text}", flush=True)


def measure(bench: Bench, profile: bool) -> dict:
    plan = bench.plan
    first = plan.mixes[0]
    results: dict = {"mixes": {str(e): {} for e in plan.mixes}, "agents": {}, "sweep": {"bridge": {}, "naive": {}},
                     "moderate": {"rate": MODERATE_RATE}}
    mixes, moderate = results["mixes"], results["moderate"]
    pool = {e: bench.bodies[(e, plan.pool_agents)] for e in plan.mixes}

    with bench.group(BRIDGE) as bridge:
        # The broker's JVM compiles its hot paths during its first seconds of load: not counted.
        step(f"warming up the broker and the bridge for {plan.broker_warmup_s:g} s (not counted)")
        bench.load(bridge, pool[first], window_s=plan.broker_warmup_s)
        for events in plan.mixes:
            step(f"bridge, {events} events/push, saturation")
            mixes[str(events)]["bridge"] = bench.load(bridge, pool[events])
        for events in plan.mixes:
            saturation = mixes[str(events)]["bridge"]["ok_per_s"]
            if saturation <= 0:
                continue
            step(f"bridge, {events} events/push, {saturation / 2:.0f} pushes/s (50% load), latency")
            mixes[str(events)]["bridge_half"] = bench.load(bridge, pool[events], rate=saturation / 2,
                                                           window_s=plan.latency_window_s)
        for conns in plan.sweep_conns:
            step(f"bridge, {first} events/push, saturation with {conns} connections")
            results["sweep"]["bridge"][str(conns)] = bench.load(bridge, pool[first], conns=conns,
                                                                window_s=plan.sweep_window_s)
        # The moderate rate, bridge / Go reference / bridge again, back to back: the CPU per push at a
        # low rate moves with whatever else the machine does, and the two bridge runs around the Go
        # one show how much (the bridge/Go ratio uses their mean).
        step(f"bridge, {first} events/push, {MODERATE_RATE:.0f} pushes/s (moderate rate)")
        moderate["bridge"] = bench.load(bridge, pool[first], rate=MODERATE_RATE, window_s=plan.latency_window_s)
        if measure_go_reference(bench, pool[first], results):
            step(f"bridge, {first} events/push, {MODERATE_RATE:.0f} pushes/s again, after the Go reference")
            moderate["bridge_again"] = bench.load(bridge, pool[first], rate=MODERATE_RATE,
                                                  window_s=plan.latency_window_s)

    for count in plan.agent_counts:
        # Long enough that every agent's push is sent at least once (bounded by the plan).
        cover = plan.agents_max_window_s if plan.agents_max_window_s > plan.window_s else None
        step(f"bridge, {count:,} distinct agents" + (f", until each was sent (at most {cover:.0f} s)" if cover else ""))
        with bench.group(BRIDGE) as bridge:
            results["agents"][str(count)] = bench.load(bridge, bench.bodies[(5, count)], cover_up_to_s=cover)

    half_rate = mixes[str(first)]["bridge"]["ok_per_s"] / 2
    results["spool"] = measure_spool(bench, pool[first], half_rate)
    with bench.group(HTTP_CEILING) as http:
        for events in plan.mixes:
            step(f"HTTP ceiling, {events} events/push")
            mixes[str(events)]["http_ceiling"] = bench.load(http, pool[events])
        if half_rate > 0:  # the same offered load as the bridge's latency run: the HTTP share of it
            step(f"HTTP ceiling, {first} events/push, {half_rate:.0f} pushes/s, latency")
            mixes[str(first)]["http_half"] = bench.load(http, pool[first], rate=half_rate,
                                                        window_s=plan.latency_window_s)
        step(f"HTTP ceiling, {first} events/push, {MODERATE_RATE:.0f} pushes/s (moderate rate)")
        moderate["http_ceiling"] = bench.load(http, pool[first], rate=MODERATE_RATE, window_s=plan.latency_window_s)

    for events in plan.mixes:
        step(f"producer ceiling, {events} events/push")
        mixes[str(events)]["producer_ceiling"] = bench.producer_ceiling(pool[events])
    if half_rate > 0:  # and the Kafka share of it
        step(f"producer ceiling, {first} events/push, {half_rate:.0f} pushes/s, latency")
        mixes[str(first)]["producer_half"] = bench.producer_ceiling(pool[first], rate=half_rate,
                                                                    window_s=plan.latency_window_s)
    step(f"producer ceiling, {first} events/push, {MODERATE_RATE:.0f} pushes/s (moderate rate)")
    moderate["producer_ceiling"] = bench.producer_ceiling(pool[first], rate=MODERATE_RATE,
                                                          window_s=plan.latency_window_s)

    with bench.group(NAIVE) as naive:
        for events in plan.mixes:
            step(f"naive receiver, {events} events/push")
            mixes[str(events)]["naive"] = bench.load(naive, pool[events])
        if half_rate > 0:  # the bridge's 50% load, offered to the naive receiver: latency compared
            step(f"naive receiver, {first} events/push, {half_rate:.0f} pushes/s, latency")
            mixes[str(first)]["naive_half"] = bench.load(naive, pool[first], rate=half_rate,
                                                         window_s=plan.latency_window_s)
        for conns in plan.sweep_conns:
            step(f"naive receiver, {first} events/push, saturation with {conns} connections")
            results["sweep"]["naive"][str(conns)] = bench.load(naive, pool[first], conns=conns,
                                                               window_s=plan.sweep_window_s)

    if profile:
        results["profile"] = profiles(bench, pool[first])
    return results


def measure_go_reference(bench: Bench, body_file: Path, results: dict) -> bool:
    """The Go reference receiver at the moderate rate, then at saturation; False (and the reason in
    the results) when it could not be built."""
    first = str(bench.plan.mixes[0])
    if not isinstance(bench.goref, Path):
        results["goref_missing"] = bench.goref
        return False
    with bench.go_reference() as goref:
        step(f"Go reference receiver, {first} events/push, {MODERATE_RATE:.0f} pushes/s (moderate rate)")
        results["moderate"]["goref"] = bench.load(goref, body_file, rate=MODERATE_RATE,
                                                  window_s=bench.plan.latency_window_s)
        step(f"Go reference receiver, {first} events/push, saturation")
        results["mixes"][first]["goref"] = bench.load(goref, body_file)
    return True


def profiles(bench: Bench, body_file: Path) -> dict:
    """py-spy on a fresh bridge at saturation, then on another at the moderate rate, over each
    load's measured window. At saturation with native frames (py-spy pauses the process for each
    sample; that did not move the CPU per push there). At the moderate rate Python frames only,
    read without pausing it: pausing makes pushes wait and then go through in groups, which
    measured at 64 to 216 us of CPU per push against 256 to 718 for the same load unsampled, so a
    paused profile would not show that load's costs."""
    found = {}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for load, rate, window_s, samples_per_s, native in (
            ("saturation", None, bench.plan.window_s, 100, True),
            ("moderate", MODERATE_RATE, bench.plan.latency_window_s, 200, False)):
        step(f"profile of the bridge (py-spy), {'saturation' if rate is None else f'{rate:.0f} pushes/s'}")
        out = CACHE / f"profile-{stamp}-{load}.txt"
        found[load] = {"file": str(out.relative_to(ROOT)), "samples_per_s": samples_per_s, "native": native,
                       **profile_bridge(bench, body_file, out, rate=rate, window_s=window_s,
                                        samples_per_s=samples_per_s, native=native)}
    return found


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
        step("spool: Kafka stopped, bridge at saturation (every push spooled)")
        broker.stop()
        wait_mode(bridge, "spooling")
        spooled["spooling"] = bench.load(bridge, body_file)
        backlog = bridge.members[0].readiness()["spool"]["entries"]
        step(f"spool: Kafka back, draining {backlog} pushes with no load")
        broker.start()
        spooled["drain"] = watch_drain(bridge, backlog)
        if half_rate > 0:
            step(f"spool: Kafka stopped, {half_rate:.0f} pushes/s for {bench.plan.latency_window_s:g} s")
            broker.stop()
            wait_mode(bridge, "spooling")
            bench.load(bridge, body_file, rate=half_rate, window_s=bench.plan.latency_window_s)
            backlog = bridge.members[0].readiness()["spool"]["entries"]
            step(f"spool: Kafka back, {half_rate:.0f} pushes/s while {backlog} pushes drain")
            broker.start()
            spooled["draining"] = bench.load(bridge, body_file, rate=half_rate, window_s=bench.plan.latency_window_s)
            _took, _ = wait_mode(bridge, "direct")
            spooled["draining"]["backlog"] = backlog
    return spooled
