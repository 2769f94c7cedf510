"""The consumer helper's bookkeeping: bounded memory of recent ids, committable offsets."""
from __future__ import annotations

import random
import sys

from bridge.consumer import AgentEvent
from bridge.consumer.state import Progress, RecentIds, receipt_ms


def test_a_repeated_id_of_the_same_agent_is_recognised_within_the_window():
    recent = RecentIds(capacity=100, window_ms=300_000)
    assert not recent.seen("1001", "a", 0)
    assert not recent.seen("1001", "b", 1_000)
    assert recent.seen("1001", "a", 130_000), "a retry within the window is a repeat"
    assert not recent.seen("1002", "a", 130_000), "ids are per agent"


def test_ids_older_than_the_window_of_that_agent_are_forgotten():
    recent = RecentIds(capacity=100, window_ms=300_000)
    recent.seen("1001", "ready", 0)
    recent.seen("1002", "x", 10_000_000)  # another agent's clock does not age this agent's ids
    assert recent.seen("1001", "ready", 299_000)
    assert not recent.seen("1001", "ready", 600_001), "outside the window: a new event"
    assert len(recent) == 2


def test_memory_is_bounded_by_the_capacity_not_by_the_number_of_agents():
    recent = RecentIds(capacity=1000, window_ms=300_000)
    rng = random.Random(7)
    for n in range(200_000):
        recent.seen(str(rng.randrange(100_000)), f"id{n}", n)
        assert len(recent) <= 1000
    assert recent.agents <= 1000
    size = sys.getsizeof(recent._agents) + sum(sys.getsizeof(ids) for ids in recent._agents.values())
    assert size < 1_000_000, size


def test_the_least_recently_active_agents_are_forgotten_first():
    recent = RecentIds(capacity=3, window_ms=300_000)
    recent.seen("old", "o1", 0)
    recent.seen("busy", "b1", 1)
    recent.seen("busy", "b2", 2)
    recent.seen("busy", "b3", 3)  # over capacity: "old" goes, "busy" keeps all three
    assert recent.agents == 1
    assert recent.seen("busy", "b1", 4) and not recent.seen("old", "o1", 5)


def test_committable_offset_stops_at_the_oldest_unfinished_record():
    progress = Progress()
    assert progress.committable() is None
    for offset in (10, 11, 12, 14):  # 13 was a transaction marker: never fetched
        progress.started(offset)
    progress.finished(12)
    progress.finished(14)
    assert progress.committable() == 10 and progress.busy
    progress.finished(10)
    assert progress.committable() == 11
    progress.finished(11)
    assert progress.committable() == 15 and not progress.busy


def test_receipt_time_comes_from_ce_time_else_the_record_timestamp():
    assert receipt_ms({"ce_time": "2025-11-24T09:33:20.850Z"}, 5) == 1763976800850
    assert receipt_ms({}, 5) == 5 and receipt_ms({"ce_time": "garbage"}, 6) == 6


def test_an_event_is_after_a_stored_position_only_when_it_is_later_on_the_same_partition():
    event = AgentEvent("1001", {}, {"ce_id": "x"}, "t", 2, 50)
    assert event.is_after(None)
    assert event.is_after(("t", 2, 49)) and not event.is_after(("t", 2, 50)) and not event.is_after(("t", 2, 51))
    assert event.is_after(["t", 3, 99]) and event.is_after(("u", 2, 99))
