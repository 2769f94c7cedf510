"""Agents at risk of sign-out: streaks per workNo, bounded, one warning past 60 s, one on recovery."""
from __future__ import annotations

import logging

from bridge.risk import AgentRisk


def test_streaks_are_counted_by_age_and_cleared_by_a_success():
    risk = AgentRisk()
    risk.failed("1", now=0.0)
    risk.failed("2", now=20.0)
    risk.failed("1", now=40.0)  # a retry: the streak still started at 0
    assert risk.failing_longer_than(30, now=45.0) == 1
    assert risk.failing_longer_than(10, now=45.0) == 2
    risk.succeeded("1", now=46.0)
    assert risk.failing_longer_than(10, now=46.0) == 1 and len(risk) == 1


def test_one_warning_past_the_threshold_and_one_line_on_recovery(caplog):
    risk = AgentRisk(warn_after_s=60)
    with caplog.at_level(logging.WARNING, logger="bridge.risk"):
        for t in (0.0, 10.0, 59.0, 61.0, 71.0, 81.0):
            risk.failed("10086", now=t)
        risk.succeeded("10086", now=85.0)
        risk.failed("10087", now=0.0)
        risk.succeeded("10087", now=5.0)  # never warned: no recovery line either
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert "agent 10086: pushes failing for 61 s" in lines[0]
    assert "agent 10086: pushes succeed again after 85 s" in lines[1]


def test_memory_is_bounded_by_the_cap_and_old_streaks_are_forgotten():
    risk = AgentRisk(cap=100, forget_after_s=300)
    for n in range(1000):
        risk.failed(str(n), now=0.0)
    assert len(risk) == 100  # the first (oldest) streaks are kept
    assert risk.failing_longer_than(30, now=200.0) == 100
    assert risk.failing_longer_than(30, now=400.0) == 0 and len(risk) == 0
