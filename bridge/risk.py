"""Agents at risk of being signed out: the gateway signs an agent out after 120 s of failed pushes.

The bridge sees every failed push of an agent, so it tracks, per workNo, since when its pushes
have been failing. Only agents failing right now are remembered, and at most `cap` of them (the
oldest streaks are kept: they are the ones closest to a sign-out). One warning names the agent
when its streak passes `warn_after_s`, one line when it recovers; a streak not heard of for
`forget_after_s` is dropped (the gateway has signed that agent out, or stopped pushing for it).
"""
from __future__ import annotations

import logging
import time

log = logging.getLogger("bridge.risk")


class Streak:
    """One agent's run of failed pushes."""

    __slots__ = ("first", "last", "warned")

    def __init__(self, now: float) -> None:
        self.first = self.last = now
        self.warned = False


class AgentRisk:
    def __init__(self, cap: int = 50_000, warn_after_s: float = 60.0, forget_after_s: float = 300.0) -> None:
        self._cap = cap
        self._warn_after_s = warn_after_s
        self._forget_after_s = forget_after_s
        self._streaks: dict[str, Streak] = {}  # by workNo

    def failed(self, work_no: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        streak = self._streaks.get(work_no)
        if streak is None:
            if len(self._streaks) >= self._cap:
                self._forget(now)
                if len(self._streaks) >= self._cap:
                    return
            self._streaks[work_no] = streak = Streak(now)
        streak.last = now
        if not streak.warned and now - streak.first >= self._warn_after_s:
            streak.warned = True
            log.warning("agent %s: pushes failing for %.0f s; the gateway signs the agent out at 120 s",
                        work_no, now - streak.first, extra={"fields": {"workNo": work_no}})

    def succeeded(self, work_no: str, now: float | None = None) -> None:
        if not self._streaks:
            return
        streak = self._streaks.pop(work_no, None)
        if streak is not None and streak.warned:
            now = time.monotonic() if now is None else now
            log.warning("agent %s: pushes succeed again after %.0f s of failures", work_no, now - streak.first,
                        extra={"fields": {"workNo": work_no}})

    def failing_longer_than(self, seconds: float, now: float | None = None) -> int:
        now = time.monotonic() if now is None else now
        self._forget(now)
        return sum(1 for streak in self._streaks.values() if now - streak.first > seconds)

    def _forget(self, now: float) -> None:
        stale = [w for w, streak in self._streaks.items() if now - streak.last > self._forget_after_s]
        for work_no in stale:
            del self._streaks[work_no]

    def __len__(self) -> int:
        return len(self._streaks)
