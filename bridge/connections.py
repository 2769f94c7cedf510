"""The open connections of one listening port: how many there are, which phase each is in and
since when, and what happens to those that outstay their phase's deadline or stand in the way of a
new connection above the bound.

A connection is counted from accept to close and is in one phase at a time:

    handshake  accepted, TLS not finished (the push port over HTTPS)
    head       waiting for a request head, or receiving one
    body       receiving a request body
    busy       the request has arrived whole: the bridge is keeping and answering it
    idle       answered, waiting for the next request on the kept-alive connection
    closing    cut by the bridge, waiting for the peer to take the close

Every phase but busy has a deadline, checked by one periodic sweep rather than a timer per
connection or per request: a head must be complete `head_timeout_s` after it started (on a new
connection, after the connection was made); a body must arrive within `body_timeout_s` of its head,
plus one second for every `body_min_rate` bytes received; an idle connection is closed after
`idle_timeout_s`; a closing one is dropped after `closing_timeout_s`. The handshake's deadline is
enforced by the event loop's TLS layer, with the same figure as the closing one.

Above `max_connections` a new connection makes room by ending, in this order: a connection already
closing; the connection idle longest among those that never had a request answered with success;
the connection in its handshake or head phase that has taken longest; the connection idle longest.
A connection receiving a body or being answered is never ended to make room: when all are, the new
connection is refused.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .logs import LineBudget

HANDSHAKE, HEAD, BODY, BUSY, IDLE, CLOSING = range(6)
PHASES = ("handshake", "head", "body", "busy", "idle", "closing")
GONE = -1  # no longer counted
CUT_REASONS = ("handshake_timeout", "head_timeout", "body_timeout", "idle_timeout", "evicted", "refused")
QUIET_REASONS = ("idle_timeout",)  # a normal end of a kept-alive connection: counted, not logged

log = logging.getLogger("bridge.connections")


class Tracked(Protocol):
    """A connection as its table sees it."""

    phase: int
    since: float  # when it entered its phase, on the event loop's clock
    received: int  # body bytes of the current request so far
    proven: bool  # a request of this connection was answered with success

    def cut(self, reason: str) -> bool:
        """A deadline passed: answer if HTTP allows it and close. False: not now (an earlier
        request of the connection is still being answered; the connection has moved itself)."""

    def evict(self) -> None:
        """Close at once, to make room (answering first if HTTP allows it)."""

    def describe(self) -> str:
        """The peer's address, for a log line."""


@dataclass(frozen=True, slots=True)
class Limits:
    max_connections: int
    handshake_timeout_s: float
    head_timeout_s: float
    body_timeout_s: float
    body_min_rate: int  # bytes per second
    idle_timeout_s: float

    @property
    def closing_timeout_s(self) -> float:
        return self.handshake_timeout_s

    @property
    def sweep_s(self) -> float:
        """How often deadlines are checked: a tenth of the shortest, from 0.05 to 0.5 s."""
        shortest = min(self.handshake_timeout_s, self.head_timeout_s, self.body_timeout_s, self.idle_timeout_s)
        return min(0.5, max(0.05, shortest / 10))


def _first(connections: dict[Tracked, None]) -> Tracked | None:
    return next(iter(connections), None)


class Connections:
    """The table of one port's connections. A phase change is a move between two dictionaries, each
    keeping its connections in the order they entered, oldest first. `start()` begins the sweep on
    the event loop, `stop()` ends it. `port` names the port in metrics and log lines."""

    def __init__(self, limits: Limits, port: str) -> None:
        self.limits = limits
        self.port = port
        self.open = 0
        self.accepted = 0
        self.cuts = dict.fromkeys(CUT_REASONS, 0)
        self._phases: tuple[dict[Tracked, None], ...] = tuple({} for _ in PHASES)
        self._idle_proven: dict[Tracked, None] = {}  # idle, and had a success: the gateway's
        self._clock: Callable[[], float] = time.monotonic
        self._timer: Cancellable | None = None
        self._lines = LineBudget()

    # -- what connections tell the table -------------------------------------------------------

    def admit(self, connection: Tracked, phase: int) -> bool:
        """Count a new connection in `phase`, making room above the bound. False: refuse it."""
        self.accepted += 1
        if self.open >= self.limits.max_connections:
            victim = self._victim()
            if victim is None:
                self._count("refused", connection)
                return False
            self._count("evicted", victim)
            victim.evict()
            self.forget(victim)
        self.open += 1
        connection.phase, connection.since = phase, self._clock()
        self._phases[phase][connection] = None
        return True

    def move(self, connection: Tracked, phase: int) -> None:
        """`connection` enters `phase` now."""
        self._leave(connection)
        connection.phase, connection.since = phase, self._clock()
        if phase == IDLE and connection.proven:
            self._idle_proven[connection] = None
        else:
            self._phases[phase][connection] = None

    def forget(self, connection: Tracked) -> None:
        """`connection` is closed, or will be without further word to the table."""
        if connection.phase != GONE:
            self._leave(connection)
            connection.phase = GONE
            self.open -= 1

    def handshake_timed_out(self, connection: Tracked) -> None:
        if connection.phase != GONE:
            self._count("handshake_timeout", connection)
            self.forget(connection)

    def end_handshakes(self) -> None:
        """Close every connection still in its TLS handshake (the server is stopping)."""
        for connection in list(self._phases[HANDSHAKE]):
            connection.evict()
            self.forget(connection)

    def count(self, phase: int) -> int:
        return len(self._phases[phase]) + (len(self._idle_proven) if phase == IDLE else 0)

    def _leave(self, connection: Tracked) -> None:
        if connection.phase == IDLE and connection.proven:
            del self._idle_proven[connection]
        else:
            del self._phases[connection.phase][connection]

    def _count(self, reason: str, connection: Tracked) -> None:
        self.cuts[reason] += 1
        if reason in QUIET_REASONS:
            return
        held_back = self._lines.take(reason)
        if held_back is not None:
            log.warning("connection cut: %s", reason, extra={"fields": {
                "port": self.port, "reason": reason, "client": connection.describe(), "open": self.open,
                "held_back": held_back}})

    # -- making room ---------------------------------------------------------------------------

    def _victim(self) -> Tracked | None:
        phases = self._phases
        victim = _first(phases[CLOSING])
        if victim is None:
            victim = _first(phases[IDLE])
        if victim is not None:
            return victim
        handshake, head = _first(phases[HANDSHAKE]), _first(phases[HEAD])
        if handshake is not None and (head is None or handshake.since <= head.since):
            return handshake
        if head is not None:
            return head
        return _first(self._idle_proven)

    # -- deadlines -----------------------------------------------------------------------------

    def start(self, clock: Callable[[], float], call_later: Callable[[float, Callable[[], None]], Cancellable]) -> None:
        """Sweep every `limits.sweep_s` seconds (`clock` and `call_later`: the event loop's)."""
        self._clock = clock
        every = self.limits.sweep_s

        def sweep() -> None:
            self._timer = call_later(every, sweep)
            self.sweep(clock())

        self._timer = call_later(every, sweep)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def sweep(self, now: float) -> None:
        """Cut every connection past its phase's deadline at `now`."""
        limits = self.limits
        self._expire(self._phases[CLOSING], now - limits.closing_timeout_s, None)
        self._expire(self._phases[IDLE], now - limits.idle_timeout_s, "idle_timeout")
        self._expire(self._idle_proven, now - limits.idle_timeout_s, "idle_timeout")
        self._expire(self._phases[HEAD], now - limits.head_timeout_s, "head_timeout")
        # Bodies are in the order they started, and a body's deadline is at least `body_timeout_s`
        # after its start: the first body younger than that ends the search.
        started_by = now - limits.body_timeout_s
        overdue = []
        for connection in self._phases[BODY]:
            if connection.since > started_by:
                break
            if connection.since + limits.body_timeout_s + connection.received / limits.body_min_rate <= now:
                overdue.append(connection)
        for connection in overdue:
            self._cut(connection, "body_timeout")

    def _expire(self, phase: dict[Tracked, None], entered_by: float, reason: str | None) -> None:
        while phase:
            connection = next(iter(phase))
            if connection.since > entered_by:
                return
            if reason is None:  # closing for too long: let go of it
                connection.evict()
                self.forget(connection)
            else:
                self._cut(connection, reason)

    def _cut(self, connection: Tracked, reason: str) -> None:
        self.move(connection, CLOSING)
        if connection.cut(reason):
            self._count(reason, connection)


class Cancellable(Protocol):
    def cancel(self) -> None: ...
