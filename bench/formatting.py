"""Small pieces shared by the benchmark's tables: figures as text, ratios, targets met or missed."""
from __future__ import annotations


def ms(latency: dict, key: str) -> str:
    value = latency.get(key)
    return "-" if value is None else f"{value:.1f}" if value < 100 else f"{value:.0f}"


def cores(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def cpu_us(r: dict | None, key: str = "server_cpu") -> float | None:
    """CPU microseconds per push answered "0" of the processes behind `key` (cores / pushes per second)."""
    if not r or r.get(key) is None or not r.get("ok_per_s"):
        return None
    return r[key] / r["ok_per_s"] * 1e6


def us(r: dict | None, key: str = "server_cpu") -> str:
    value = cpu_us(r, key)
    return "-" if value is None else f"{value:.0f}"


def per_cpu_second(r: dict | None) -> float | None:
    """Pushes served per CPU-second of the server process(es)."""
    return ratio(r and r["ok_per_s"], r and r.get("server_cpu"))


def check(name: str, value: float | None, op: str, target: float, unit: str = "") -> str:
    """One line of a targets block: the figure, the target and whether it was met."""
    if value is None:
        verdict, shown = "not measured", "-"
    else:
        met = {">=": value >= target, "<=": value <= target, "<": value < target}[op]
        verdict, shown = ("met" if met else "MISSED"), f"{value:.2f}{unit}"
    return f"  {name:<44}{shown:>12}  target {op} {target:g}{unit}  {verdict}"
