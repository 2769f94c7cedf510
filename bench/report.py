"""The report of `make bench`: the throughput and latency tables, the ratios and the targets.

The CPU per push against the Go reference, and the profiles, are bench/cpu_report.py; the
replicas behind the router, bench/replicas_report.py.
"""
from __future__ import annotations

from collections.abc import Iterator

from .formatting import check, cores, ms, per_cpu_second, ratio
from .plan import TARGETS, Plan
from .processes import NCPU

RATIOS = ("bridge/HTTP", "bridge/producer", "bridge/combined", "bridge/naive", "bridge/naive per CPU-second")


def row(name: str, events: int, r: dict | None) -> str:
    if r is None:
        return f"{name:<26}{events:>4}  (not measured)"
    lat = r.get("latency_ms") or {}
    rss = r.get("rss_mb")
    return (f"{name:<26}{events:>4}{r['ok_per_s']:>10.0f}{r['ok_per_s'] * events:>10.0f}{r.get('errors', 0):>7}"
            f"{ms(lat, 'p50'):>8}{ms(lat, 'p99'):>8}{ms(lat, 'p99.9'):>8}"
            f"{cores(r.get('server_cpu')):>7}{cores(r.get('broker_cpu')):>7}{cores(r.get('gen_cpu')):>7}"
            f"{cores(r.get('other_cpu')):>7}{'-' if rss is None else f'{rss:.0f}':>7}")


def all_runs(results: dict) -> Iterator[tuple[str, dict]]:
    """(name, figures) of every measured run."""
    for events, runs in results["mixes"].items():
        for name, r in runs.items():
            yield f"{name} ({events} ev/push)", r
    for name, r in results.get("moderate", {}).items():
        if isinstance(r, dict):
            yield f"{name} at the moderate rate", r
    for system, runs in results.get("sweep", {}).items():
        for conns, r in runs.items():
            yield f"{system} with {conns} connections", r
    for count, r in results["agents"].items():
        yield f"bridge with {int(count):,} agents", r
    for load, profile in (results.get("profile") or {}).items():
        if profile.get("load"):
            yield f"profiled bridge ({load})", profile["load"]


def combined_ceiling(m: dict) -> float | None:
    http, producer = m.get("http_ceiling"), m.get("producer_ceiling")
    if http and producer and http["ok_per_s"] and producer["ok_per_s"]:
        return 1 / (1 / http["ok_per_s"] + 1 / producer["ok_per_s"])
    return None


def mix_rows(events: int, m: dict) -> list[str]:
    combined = combined_ceiling(m)
    lines = [row("bridge (saturation)", events, m.get("bridge")),
             row("bridge @ 50% load", events, m.get("bridge_half")),
             row("HTTP ceiling (no Kafka)", events, m.get("http_ceiling"))]
    if m.get("http_half"):
        lines.append(row("HTTP ceiling @ same load", events, m.get("http_half")))
    lines.append(row("producer ceiling (no HTTP)", events, m.get("producer_ceiling")))
    if m.get("producer_half"):
        lines.append(row("producer @ same load", events, m.get("producer_half")))
    lines.append(f"{'combined ceiling':<26}{events:>4}" + (
        f"{combined:>10.0f}{combined * events:>10.0f}" if combined else "         -"))
    lines.append(row("naive receiver", events, m.get("naive")))
    if m.get("naive_half"):
        lines.append(row("naive @ bridge's 50% load", events, m.get("naive_half")))
    if m.get("goref"):
        lines.append(row("Go reference receiver", events, m.get("goref")))
    lines.append("")
    return lines


def mix_ratios(m: dict) -> dict[str, float | None]:
    bridge = (m.get("bridge") or {}).get("ok_per_s")
    http, producer = m.get("http_ceiling"), m.get("producer_ceiling")
    return {
        "bridge/HTTP": ratio(bridge, http and http["ok_per_s"]),
        "bridge/producer": ratio(bridge, producer and producer["ok_per_s"]),
        "bridge/combined": ratio(bridge, combined_ceiling(m)),
        "bridge/naive": ratio(bridge, (m.get("naive") or {}).get("ok_per_s")),
        "bridge/naive per CPU-second": ratio(per_cpu_second(m.get("bridge")), per_cpu_second(m.get("naive"))),
    }


def spool_lines(spool: dict, first_mix: int) -> list[str]:
    lines = [row("spooling (Kafka down)", first_mix, spool.get("spooling")),
             row("@ 50% while draining", first_mix, spool.get("draining"))]
    drain = spool.get("drain") or {}
    if drain.get("per_s"):
        lines.append(f"Drain with no load: {drain['entries']} spooled pushes; the first delivered "
                     f"{drain['reconnect_s']:.1f} s after the broker was back (health check and reconnection), "
                     f"the rest at {drain['per_s']:.0f} pushes/s. The row above: a 50% load while a backlog of "
                     f"{(spool.get('draining') or {}).get('backlog', '-')} pushes drained.")
    return [*lines, ""]


def half_load_notes(results: dict, plan: Plan) -> list[str]:
    lines = []
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
    return lines


def sweep_lines(results: dict, plan: Plan, conns: int) -> list[str]:
    sweep = results.get("sweep") or {}
    if not plan.sweep_conns or not sweep.get("bridge"):
        return []
    first_mix = str(plan.mixes[0])
    main = {"bridge": results["mixes"][first_mix].get("bridge"), "naive": results["mixes"][first_mix].get("naive")}
    lines = [f"Concurrency check ({first_mix} ev/push, saturation; {conns} connections is the main figure):",
             f"{'connections':>12}{'bridge/s':>10}{'p50 ms':>8}{'naive/s':>10}{'p50 ms':>8}{'bridge/naive':>14}"]
    for c in sorted({*plan.sweep_conns, conns}):
        b = main["bridge"] if c == conns else sweep["bridge"].get(str(c))
        n = main["naive"] if c == conns else sweep["naive"].get(str(c))
        r = ratio(b and b["ok_per_s"], n and n["ok_per_s"])
        lines.append(f"{c:>12}{(b or {}).get('ok_per_s', 0):>10.0f}{ms((b or {}).get('latency_ms') or {}, 'p50'):>8}"
                     f"{(n or {}).get('ok_per_s', 0):>10.0f}{ms((n or {}).get('latency_ms') or {}, 'p50'):>8}"
                     f"{'-' if r is None else f'{r:.2f}':>14}")
    return [*lines, ""]


def agent_lines(agents: dict, plan: Plan) -> list[str]:
    lines = ["Distinct agents (5 ev/push, saturation, a fresh bridge each):",
             f"{'agents':>10}{'reached':>10}{'window s':>10}{'pushes/s':>10}{'events/s':>10}{'errors':>7}"
             f"{'srv':>7}{'kafka':>7}{'gen':>7}{'other':>7}{'RSS MB':>8}{'peak MB':>8}"]
    for count in plan.agent_counts:
        a = agents.get(str(count))
        if a is not None:
            lines.append(f"{count:>10}{a['bodies_used']:>10}{a['window_s']:>10.0f}{a['ok_per_s']:>10.0f}"
                         f"{a['ok_per_s'] * 5:>10.0f}{a['errors']:>7}{cores(a['server_cpu']):>7}"
                         f"{cores(a['broker_cpu']):>7}{cores(a['gen_cpu']):>7}{cores(a['other_cpu']):>7}"
                         f"{a['rss_mb']:>8.0f}{a['peak_mb']:>8.0f}")
    return [*lines, ""]


def target_lines(results: dict, plan: Plan, ratios: dict) -> list[str]:
    first = str(plan.mixes[0])
    m, agents, spool = results["mixes"][first], results["agents"], results.get("spool") or {}
    half, naive_half = m.get("bridge_half") or {}, m.get("naive_half") or {}
    few, many = agents.get(str(min(plan.agent_counts))), agents.get(str(max(plan.agent_counts)))
    eight_bridge, eight_naive = ((results.get("sweep") or {}).get(s, {}).get("8") for s in ("bridge", "naive"))
    r = ratios[int(first)]
    lines = [f"Targets ({first} events/push, one run on this machine; see the CPU columns before trusting a miss):",
             check("bridge/combined ceiling", r["bridge/combined"], ">=", TARGETS["bridge/combined"]),
             check("bridge/naive, pushes/s", r["bridge/naive"], ">=", TARGETS["bridge/naive"]),
             check("bridge/naive, pushes per CPU-second", r["bridge/naive per CPU-second"], ">=",
                   TARGETS["bridge/naive per CPU-second"]),
             check("bridge/naive, pushes/s at 8 connections",
                   ratio(eight_bridge and eight_bridge["ok_per_s"], eight_naive and eight_naive["ok_per_s"]), ">=",
                   TARGETS["bridge/naive at 8 connections"]),
             check("p50 @ 50% load, bridge/naive", ratio((half.get("latency_ms") or {}).get("p50"),
                                                         (naive_half.get("latency_ms") or {}).get("p50")), "<",
                   TARGETS["p50 bridge/naive @ same load"]),
             check("p99 @ 50% load, bridge/naive", ratio((half.get("latency_ms") or {}).get("p99"),
                                                         (naive_half.get("latency_ms") or {}).get("p99")), "<",
                   TARGETS["p99 bridge/naive @ same load"]),
             check(f"RSS with {max(plan.agent_counts):,} agents (peak)", many and many["peak_mb"], "<=",
                   TARGETS["rss_100k_mb"], " MB"),
             check(f"pushes/s {max(plan.agent_counts):,} agents / {min(plan.agent_counts)} agents",
                   ratio(many and many["ok_per_s"], few and few["ok_per_s"]), ">=", TARGETS["agents_100k/10"]),
             check("spooling pushes/s / direct pushes/s", ratio((spool.get("spooling") or {}).get("ok_per_s"),
                                                                (m.get("bridge") or {}).get("ok_per_s")),
                   ">=", TARGETS["spooling/direct"]),
             check("drain pushes/s / 50% load pushes/s", ratio((spool.get("drain") or {}).get("per_s"),
                                                               half.get("rate")), ">=", TARGETS["drain/50%"])]
    if many and many["bodies_used"] < max(plan.agent_counts):
        lines.append(f"  note: this run reached {many['bodies_used']:,} of {max(plan.agent_counts):,} agents "
                     "(a full run grows that window until every agent was sent)")
    return lines


def run_notes(results: dict, first: str) -> list[str]:
    """Errors and unanswered pushes of any run, and how noisy the machine was."""
    lines = []
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
    return lines


def report(results: dict, plan: Plan, workers: int, conns: int) -> str:
    head = results["machine"]
    lines = [f"cc-gateway-bridge benchmark ({'quick' if head['quick'] else 'full'} run, {head['cpus']} CPUs, "
             f"load average before start {head['loadavg_before']}, bridge workers: {workers}, "
             f"generator connections: {conns})",
             "Saturation: closed loop (each connection sends again as soon as answered); latency there is "
             "informative only.",
             "'@ 50%': open loop at half the bridge's saturation pushes/s (no coordinated omission: a push waits for "
             "a free connection if the server is slow, and that wait counts).",
             "CPU columns are cores used over the window: srv = the system measured, kafka = the broker, "
             "gen = load generator, other = the rest of the machine (other users: noise).",
             "",
             f"{'system':<26}{'ev':>4}{'pushes/s':>10}{'events/s':>10}{'errors':>7}{'p50ms':>8}{'p99ms':>8}"
             f"{'p99.9ms':>8}{'srv':>7}{'kafka':>7}{'gen':>7}{'other':>7}{'RSS MB':>7}"]
    ratios = {}
    for events in plan.mixes:
        lines += mix_rows(events, results["mixes"][str(events)])
        ratios[events] = mix_ratios(results["mixes"][str(events)])
    results["ratios"] = ratios
    if results.get("spool"):
        lines += spool_lines(results["spool"], plan.mixes[0])
    lines += half_load_notes(results, plan)
    lines += ["", "Ratios of pushes/s " + "".join(f"{f'{e} ev/push':>12}" for e in plan.mixes) + "   target (5 ev/push)"]
    for name in RATIOS:
        target = TARGETS.get(name)
        values = "".join(f"{'-' if ratios[e][name] is None else f'{ratios[e][name]:.2f}':>12}" for e in plan.mixes)
        lines.append(f"  {name:<17}{values}   {'>= ' + format(target, 'g') if target else ''}")
    lines.append("")
    lines += sweep_lines(results, plan, conns)
    lines += agent_lines(results["agents"], plan)
    lines += target_lines(results, plan, ratios)
    lines += run_notes(results, str(plan.mixes[0]))
    return "\n".join(lines)
