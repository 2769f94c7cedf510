"""The table of replicas behind the router (bench/replicas.py), with the router's own CPU per push
against a replica's and the targets of issue 24."""
from __future__ import annotations

from typing import Any

from .formatting import check, cores, cpu_us, ms, ratio, us
from .plan import TARGETS
from .processes import NCPU

Figures = dict[str, Any]


def router_share(r: Figures) -> float | None:
    """The router's CPU per push over the replicas' (all together: each push is one replica's work)."""
    return ratio(cpu_us(r, "router_cpu"), cpu_us(r, "server_cpu"))


def share_text(r: Figures) -> str:
    value = router_share(r)
    return "-" if value is None else f"{value:.2f}"


def saturation_lines(results: Figures, counts: list[int], first: float) -> list[str]:
    rows, direct = results["counts"], results["direct"]
    lines = [f"{'saturation':<24}{'pushes/s':>9}{f'vs {counts[0]}':>7}{'errors':>7}{'rep us':>8}{'rtr us':>8}"
             f"{'rtr/rep':>8}{'rep':>6}{'router':>7}{'kafka':>6}{'gen':>6}{'other':>6}  share of each replica"]

    def saturation(name: str, r: Figures, shares: list[float] | None) -> str:
        share = " / ".join(f"{s:.0%}" for s in shares) if shares else "-"
        return (f"{name:<24}{r['ok_per_s']:>9.0f}{r['ok_per_s'] / first:>7.2f}{r.get('errors', 0):>7}"
                f"{us(r, 'server_cpu'):>8}{us(r, 'router_cpu'):>8}{share_text(r):>8}"
                f"{cores(r.get('server_cpu')):>6}{cores(r.get('router_cpu')):>7}{cores(r.get('broker_cpu')):>6}"
                f"{cores(r.get('gen_cpu')):>6}{cores(r.get('other_cpu')):>6}  {share}")

    if direct.get("saturation"):
        lines.append(saturation("1 bridge, no router", direct["saturation"], None))
    for n in counts:
        lines.append(saturation(f"{n} behind the router", rows[str(n)]["saturation"], rows[str(n)]["shares"]))
    return lines


def rate_lines(results: Figures, counts: list[int]) -> list[str]:
    rows, direct = results["counts"], results["direct"]
    base = direct.get("rate") or {}
    base_lat = base.get("latency_ms") or {}
    rate = f"@ {results['rate']:.0f} pushes/s"
    lines = [f"{rate:<24}{'answered':>9}{'errors':>7}{'p50 ms':>8}{'p99 ms':>8}{'+p50':>7}{'+p99':>7}"
             f"{'rep us':>8}{'rtr us':>8}{'rtr/rep':>8}{'other':>6}{'Tr p50':>8}{'Tr p99':>7}{'own ms':>7}{'own p99':>8}"]

    def at_rate(name: str, r: Figures) -> str:
        lat, log = r.get("latency_ms") or {}, r.get("router_log") or {}
        added = [lat[k] - base_lat[k] if r is not base and k in lat and k in base_lat else None
                 for k in ("p50", "p99")]
        replica, own = log.get("replica_ms") or {}, log.get("own_ms") or {}
        return (f"{name:<24}{r['ok_per_s']:>9.0f}{r.get('errors', 0):>7}{ms(lat, 'p50'):>8}{ms(lat, 'p99'):>8}"
                + "".join("      -" if a is None else f"{a:>+7.1f}" for a in added)
                + f"{us(r, 'server_cpu'):>8}{us(r, 'router_cpu'):>8}{share_text(r):>8}"
                  f"{cores(r.get('other_cpu')):>6}{ms(replica, 'p50'):>8}{ms(replica, 'p99'):>7}"
                  f"{ms(own, 'mean'):>7}{ms(own, 'p99'):>8}")

    if base:
        lines.append(at_rate("1 bridge, no router", base))
    for n in counts:
        lines.append(at_rate(f"{n} behind the router", rows[str(n)]["rate"]))
    if direct.get("rate_again"):
        lines.append(at_rate("1 bridge, no router, last", direct["rate_again"]))
    return lines


def target_lines(results: Figures, counts: list[int]) -> list[str]:
    rows, rate = results["counts"], results["rate"]
    lines = [f"Targets (issue 24): the router's CPU per push at most {TARGETS['cpu router/replica']:g} of a "
             f"replica's at the same rate; p99 through the router at {rate:.0f} pushes/s (50% load) under "
             f"{TARGETS['p99 ms @ 50% load']:g} ms:"]
    for n in counts:
        row = rows[str(n)]
        lines += [check(f"router/replica CPU per push, {n} at saturation", router_share(row["saturation"]), "<=",
                        TARGETS["cpu router/replica"]),
                  check(f"router/replica CPU per push, {n} at {rate:.0f}/s", router_share(row["rate"]), "<=",
                        TARGETS["cpu router/replica"]),
                  check(f"p99 through the router, {n} at {rate:.0f}/s", (row["rate"].get("latency_ms") or {}).get("p99"),
                        "<", TARGETS["p99 ms @ 50% load"], " ms")]
    return lines


def report(results: Figures, conns: int) -> str:
    counts = [int(n) for n in results["counts"]]
    rows, direct = results["counts"], results["direct"]
    if not counts:
        return "Replicas behind the router: not measured"
    first = rows[str(counts[0])]["saturation"]["ok_per_s"]
    lines = [f"Replicas behind the router ({results['events']} ev/push, the shipped router.cfg on loopback, "
             f"{conns} generator connections, {NCPU} CPUs shared by everything)",
             "CPU us/push: CPU microseconds per push of the replicas (all together: each push is one replica's work) "
             "and of the router process; rtr/rep: their ratio. Cores: over the window.",
             "",
             *saturation_lines(results, counts, first),
             "",
             *rate_lines(results, counts),
             "",
             f"Rate: half the saturation through the router with {counts[0]} replica(s), the same for every row; "
             "+p50/+p99: ms added compared with the same rate sent straight to one bridge (the first such row). "
             "The last row repeats that straight run at the end: its +p50/+p99 is how much the same "
             "measurement moved within this run. From the router's log, whole ms: Tr = the replica's answer "
             "time as the router saw it; own = the router's own time per push (%Ta - %Tr), mean and p99."]
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
    lines += ["", *target_lines(results, counts)]
    lines.append(
        f"What {NCPU} cores can show: replicas, router, broker and generator all share them. One bridge (one Python "
        "process) uses at most one core, so a second replica can take part of what the others leave of the "
        "other core; a third has nothing left to take. The rows show what the router costs (CPU per push, "
        "latency at the same rate) and that spreading agents over replicas does not collapse throughput, not how "
        "far replicas scale with cores of their own.")
    return "\n".join(lines)
