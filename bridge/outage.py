"""Outage mode as operators read it in the log: one line when pushes start going to the spool
because Kafka cannot take them, one when everything that went through the spool is in Kafka.

Delivery reports each push it spools; the drainer reports each moment the replica's own slot has
nothing it may deliver. Nothing here decides where a push goes.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

log = logging.getLogger("bridge.delivery")


class Outage:
    def __init__(self, spooled_before_start: bool = False) -> None:
        self._started: float | None = time.monotonic() if spooled_before_start else None
        self._spooled = 0

    @property
    def on(self) -> bool:
        return self._started is not None

    def spooled(self, reason: str, directory: Path) -> None:
        """A push went to the spool because `reason` (why Kafka could not take it)."""
        if self._started is None:
            self._started = time.monotonic()
            log.warning("outage mode: %s; pushes are kept in the spool %s and delivered later", reason, directory)
        self._spooled += 1

    def idle(self) -> None:
        """The replica's own slot is idle: nothing undelivered, nothing being written, no hold."""
        if self._started is not None:
            log.warning("outage mode ended: %d pushes went through the spool in %.1f s and are all in Kafka",
                        self._spooled, time.monotonic() - self._started)
            self._started, self._spooled = None, 0
