"""CPU per push against the Go reference receiver (issue 24), at saturation and at the moderate
rate, with the targets; and the profiles of the bridge at both loads (--profile)."""
from __future__ import annotations

from .formatting import check, cores, cpu_us, ms, ratio, us
from .plan import TARGETS, Plan

SYSTEMS = (("bridge", "bridge"), ("HTTP ceiling (no Kafka)", "http_ceiling"),
           ("producer ceiling (no HTTP)", "producer_ceiling"), ("Go reference receiver", "goref"))


def cells(r: dict | None) -> str:
    if not r:
        return f"{'(not measured)':>40}"
    lat = r.get("latency_ms") or {}
    return (f"{r['ok_per_s']:>9.0f}{us(r):>8}{ms(lat, 'p50'):>7}{ms(lat, 'p99'):>7}"
            f"{cores(r.get('server_cpu')):>6}{cores(r.get('broker_cpu')):>6}{cores(r.get('other_cpu')):>6}")


def bridge_moderate_us(moderate: dict) -> float | None:
    """The bridge's CPU per push at the moderate rate: the mean of its runs before and after the Go
    reference's (the second is missing when the Go reference is)."""
    runs = [v for v in (cpu_us(moderate.get("bridge")), cpu_us(moderate.get("bridge_again"))) if v is not None]
    return sum(runs) / len(runs) if runs else None


def cpu_per_push(results: dict, plan: Plan) -> list[str]:
    first = str(plan.mixes[0])
    saturation, moderate = results["mixes"][first], results.get("moderate") or {}
    rate = moderate.get("rate", 0)
    columns = f"{'pushes/s':>9}{'us/push':>8}{'p50':>7}{'p99':>7}{'srv':>6}{'kafka':>6}{'other':>6}"
    lines = [f"CPU per push ({first} ev/push, bodies of {plan.pool_agents:,} agents): CPU microseconds of the server "
             "process(es) per push answered \"0\" over the window; srv/kafka/other in cores, p50/p99 in ms.",
             f"{'':<28}{'saturation (closed loop)':<49}  {f'{rate:,.0f} pushes/s (open loop)':<49}",
             f"{'system':<28}{columns}  {columns}"]
    for name, key in SYSTEMS:
        lines.append(f"{name:<28}{cells(saturation.get(key))}  {cells(moderate.get(key))}")
    if moderate.get("bridge_again"):
        lines.append(f"{'bridge, again after Go':<28}{'':<49}  {cells(moderate.get('bridge_again'))}")
    sat_ratio = ratio(cpu_us(saturation.get("bridge")), cpu_us(saturation.get("goref")))
    mod_ratio = ratio(bridge_moderate_us(moderate), cpu_us(moderate.get("goref")))
    shown = [f"{'-' if x is None else f'{x:.2f}':>17}" for x in (sat_ratio, mod_ratio)]
    lines.append(f"{'bridge/Go, CPU per push':<28}{shown[0]}{'':<32}  {shown[1]}")
    lines.append("At the moderate rate the bridge ran before and after the Go reference; the ratio takes the mean "
                 "of its two runs, and their difference is how much that figure moves within a run.")
    if results.get("goref_missing"):
        lines.append(f"  Go reference receiver not measured: {results['goref_missing']}")
    for name, r in ((f"{key} at {rate:,.0f}/s", moderate.get(key)) for _, key in SYSTEMS):
        if r and r.get("dropped"):
            lines.append(f"  {name}: {r['dropped']} pushes never sent (the generator's queue was full)")
    half = saturation.get("bridge_half") or {}
    lines += ["",
              "Targets (issue 24; one run on this machine):",
              check("CPU per push, bridge/Go at saturation", sat_ratio, "<=", TARGETS["cpu bridge/Go at saturation"]),
              check(f"CPU per push, bridge/Go at {rate:,.0f} pushes/s", mod_ratio, "<=",
                    TARGETS["cpu bridge/Go at the moderate rate"]),
              check(f"p99 of the bridge at 50% load ({half.get('rate', 0):,.0f}/s)",
                    (half.get("latency_ms") or {}).get("p99"), "<", TARGETS["p99 ms @ 50% load"], " ms")]
    return lines


def profile_lines(load: str, profile: dict, first: str) -> list[str]:
    if not profile.get("samples"):
        return [f"Profile of the bridge ({load}): {profile.get('error', 'no samples')}"]
    run = profile.get("load") or {}
    offered = "saturation" if load == "saturation" else f"{run.get('rate', 0):,.0f} pushes/s offered"
    how = ("--native, pausing it for each sample" if profile.get("native", True)
           else "Python frames only, --nonblocking (not paused)")
    return [f"Profile of the bridge at {offered} ({first} ev/push, {run.get('ok_per_s', 0):.0f} pushes/s answered "
            f"while sampled, {us(run)} us/push; py-spy {how}, {profile.get('samples_per_s', 100)} Hz, "
            f"{profile['samples']} samples of busy time, {profile.get('waiting', 0)} of waiting threads left out; "
            f"raw stacks in {profile['file']}):",
            "  by area (the innermost Python frame of each sample):",
            *(f"    {share:5.1f}%  {name}" for name, share in profile["areas"]),
            "  functions by own time (innermost frame, native or Python):",
            *(f"    {share:5.1f}%  {name}" for name, share in profile["self"]),
            "  bridge functions by inclusive time:",
            *(f"    {share:5.1f}%  {name}" for name, share in profile["bridge_inclusive"])]


def cpu_report(results: dict, plan: Plan) -> str:
    lines = cpu_per_push(results, plan)
    for load, profile in (results.get("profile") or {}).items():
        lines += ["", *profile_lines(load, profile, str(plan.mixes[0]))]
    return "\n".join(lines)
