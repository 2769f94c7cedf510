"""The connection table without sockets: deadlines by phase, the order in which connections make
room above the bound, and what is never cut (bridge/connections.py)."""
from __future__ import annotations

import pytest

from bridge.connections import BODY, BUSY, CLOSING, GONE, HANDSHAKE, HEAD, IDLE, Connections, Limits

LIMITS = Limits(max_connections=4, handshake_timeout_s=5, head_timeout_s=10, body_timeout_s=10, body_min_rate=1000,
                idle_timeout_s=65)


class Conn:
    """A connection as the table sees it, recording how it was ended."""

    def __init__(self, name: str, proven: bool = False, postpone: bool = False) -> None:
        self.name, self.proven, self.postpone = name, proven, postpone
        self.phase, self.since, self.received = GONE, 0.0, 0
        self.ended: str | None = None

    def cut(self, reason: str) -> bool:
        if self.postpone:
            return False
        self.ended = reason
        return True

    def evict(self) -> None:
        self.ended = "evicted"

    def describe(self) -> str:
        return self.name


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def table(clock: Clock, limits: Limits = LIMITS) -> Connections:
    connections = Connections(limits, "push")
    connections._clock = clock  # what start() sets to the event loop's clock
    return connections


def opened(connections: Connections, clock: Clock, *phases: int, proven: bool = False) -> list[Conn]:
    made = []
    for n, phase in enumerate(phases):
        conn = Conn(f"{phase}-{n}", proven)
        assert connections.admit(conn, HEAD if phase != HANDSHAKE else HANDSHAKE)
        if phase not in (HEAD, HANDSHAKE):
            connections.move(conn, phase)
        clock.now += 1
        made.append(conn)
    return made


def test_each_phase_is_cut_at_its_deadline_and_a_busy_connection_never(clock):
    connections = table(clock)
    head, body, busy, idle = opened(connections, clock, HEAD, BODY, BUSY, IDLE)
    started = {c.name: c.since for c in (head, body, busy, idle)}
    clock.now = started[head.name] + 9.9
    connections.sweep(clock.now)
    assert head.ended is None
    clock.now = started[head.name] + 10
    connections.sweep(clock.now)
    assert head.ended == "head_timeout" and head.phase == CLOSING
    clock.now = started[body.name] + 10
    connections.sweep(clock.now)
    assert body.ended == "body_timeout"
    clock.now = started[idle.name] + 65
    connections.sweep(clock.now)
    assert idle.ended == "idle_timeout"
    clock.now += 3600
    connections.sweep(clock.now)
    assert busy.ended is None and busy.phase == BUSY
    assert connections.cuts["head_timeout"] == connections.cuts["body_timeout"] == connections.cuts["idle_timeout"] == 1


def test_a_body_gets_one_more_second_per_min_rate_bytes_received(clock):
    connections = table(clock)
    [body] = opened(connections, clock, BODY)
    body.received = 5000  # 5 s more at 1000 bytes/s
    connections.sweep(body.since + 14.9)
    assert body.ended is None
    connections.sweep(body.since + 15)
    assert body.ended == "body_timeout"


def test_a_connection_that_postpones_its_cut_is_not_counted(clock):
    connections = table(clock)
    conn = Conn("pipelined", postpone=True)
    connections.admit(conn, HEAD)
    connections.sweep(clock.now + 10)
    assert connections.cuts["head_timeout"] == 0


def test_closing_connections_are_let_go_after_the_closing_deadline(clock):
    connections = table(clock)
    [conn] = opened(connections, clock, HEAD)
    connections.move(conn, CLOSING)
    connections.sweep(conn.since + 5)
    assert conn.ended == "evicted" and conn.phase == GONE and connections.open == 0


def test_room_is_made_closing_first_then_unproven_idle_then_the_slowest_head_or_handshake(clock):
    connections = table(clock)
    head, handshake, idle, closing = opened(connections, clock, HEAD, HANDSHAKE, IDLE, CLOSING)
    order = []
    for _ in range(4):
        newcomer = Conn("new")
        assert connections.admit(newcomer, HANDSHAKE)
        connections.move(newcomer, BUSY)  # the newcomers are not candidates themselves
        order.append(next(c.name for c in (head, handshake, idle, closing) if c.ended and c.name not in order))
    assert order == [closing.name, idle.name, head.name, handshake.name]
    assert connections.open == 4 and connections.cuts["evicted"] == 4


def test_the_gateways_idle_connections_go_after_the_slow_heads(clock):
    connections = table(clock)
    [gateway] = opened(connections, clock, IDLE, proven=True)
    head, _, _ = opened(connections, clock, HEAD, BUSY, BODY)
    assert connections.admit(Conn("new"), HEAD)
    assert head.ended == "evicted" and gateway.ended is None


def test_when_every_connection_has_a_request_the_new_one_is_refused(clock):
    connections = table(clock)
    pushes = opened(connections, clock, BODY, BODY, BUSY, BUSY)
    assert not connections.admit(Conn("new"), HANDSHAKE)
    assert all(c.ended is None for c in pushes)
    assert connections.cuts["refused"] == 1 and connections.open == 4


def test_counts_by_phase(clock):
    connections = table(clock)
    opened(connections, clock, HEAD, IDLE, BUSY)
    opened(connections, clock, IDLE, proven=True)
    assert [connections.count(p) for p in (HANDSHAKE, HEAD, BODY, BUSY, IDLE, CLOSING)] == [0, 1, 0, 1, 2, 0]
    assert connections.accepted == connections.open == 4
