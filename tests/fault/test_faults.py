"""Fault drills, short form: kill, stop and freeze the real broker and bridge under gateway load,
then prove from Kafka that every event answered "0" is there, in order per agent.

50 simulated agents retrying every second (the gateway waits 10 s; the rule is the same), a few
seconds of load before and after each fault. The figures line of each scenario is printed
(`pytest -s` shows it) and is the assertion message on failure. The long form, with more agents
and minutes of load, is `python -m bench.faults`.
"""
from __future__ import annotations

import os

import pytest

from bench.faults import BROKER_SCENARIOS, LONG_ONLY, DrillSettings, run_drill

pytestmark = pytest.mark.fault

# Extra bridge settings for every drill, e.g. BENCH_BRIDGE_ENV="BRIDGE_ATOMIC_PUSHES=true".
EXTRA_ENV = dict(item.split("=", 1) for item in os.environ.get("BENCH_BRIDGE_ENV", "").split() if "=" in item)

SHORT = DrillSettings(agents=50, duration_s=14.0, fault_at=0.3, after_s=6.0, retry_interval_s=1.0, timeout_s=8.0,
                      drain_s=30.0, pause_s=8.0, outage_s=10.0, long_outage_s=125.0, partitions=6,
                      bridge_env=EXTRA_ENV)
SHORT_SCENARIOS = [s for s in BROKER_SCENARIOS if s not in LONG_ONLY]  # those run in the long form only


@pytest.mark.parametrize("scenario", SHORT_SCENARIOS)
async def test_no_acknowledged_event_is_lost_or_reordered(scenario, disposable_kafka, tls_dir, tmp_path):
    result = await run_drill(scenario, disposable_kafka, tls_dir, tmp_path, SHORT)
    print(result.line())
    figures = result.figures
    assert result.ok, f"{result.line()}\n{figures.details()}"
    assert figures.pushes_acked > 0 and figures.recovery_s is not None, (
        f"no push was acknowledged after the fault ended: {result.line()}")
