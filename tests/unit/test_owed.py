"""`owed()`: how far another slot must deliver before this replica's new pushes may go to Kafka.

One row per case named in docs/delivery.md ("What a replica owes another slot"): what this replica
saw of the slot last time, what it sees now, and the mark it must wait for (None: nothing)."""
from __future__ import annotations

import pytest

from bridge.spool.ledger import Position
from bridge.spool.slots import Owner, State, View, owed

SEGMENTS = ((1, 100), (2, 50), (3, 80), (4, 30))  # (segment id, size): the slot ends at (4, 30)


def view(incarnation: str = "i1", *, alive: bool = True, first: int = 1, departures: int = 0,
         serving: bool = True, departed_at: Position | None = None, position: Position | None = None,
         segments: tuple[tuple[int, int], ...] = SEGMENTS) -> View:
    owner = Owner(incarnation, first)
    return View("slot-7", owner, alive, State(incarnation, departures, serving, departed_at), position, segments)


CASES = [
    # (case, before, now, mark)
    ("the same owner kept taking pushes: its agents stayed with it",
     view(departures=1, departed_at=(2, 50)), view(departures=1, departed_at=(2, 50)), None),
    ("the same owner left since: up to where it stopped",
     view(), view(departures=1, serving=False, departed_at=(3, 80)), (3, 80)),
    ("the same owner left and came back: up to where it stopped last",
     view(departures=1, departed_at=(2, 50)), view(departures=2, departed_at=(3, 80)), (3, 80)),
    ("the same owner left since, and that is delivered already",
     view(), view(departures=1, serving=False, departed_at=(3, 80), position=(4, 0)), None),
    ("first look at a live owner: what earlier owners of the slot left",
     None, view(first=3), (2, 50)),
    ("first look at a live owner that wrote every segment itself",
     None, view(first=1), None),
    ("a new owner since the last look: what the earlier owners left",
     view("i1"), view("i2", first=4), (3, 80)),
    ("a new owner that already left once: the later of the two marks",
     view("i1"), view("i2", first=2, departures=1, serving=False, departed_at=(4, 10)), (4, 10)),
    ("the owner died since the last look: everything in the slot",
     view(), view(alive=False), (4, 30)),
    ("an owner never seen alive, gone now: everything in the slot",
     None, view(alive=False), (4, 30)),
    ("the owner stopped beating since the last look (frozen, hung): everything in the slot",
     view(), View("slot-7", Owner("i1", 1), True, State("i1", 0, True), None, SEGMENTS, stale=True), (4, 30)),
    ("stale at the last look and still stale: settled then",
     View("slot-7", Owner("i1", 1), True, State("i1"), None, SEGMENTS, stale=True),
     View("slot-7", Owner("i1", 1), True, State("i1"), None, SEGMENTS, stale=True), None),
    ("back from stale, having left and joined again: where it stopped",
     View("slot-7", Owner("i1", 4), True, State("i1"), None, SEGMENTS, stale=True),
     view("i1", first=4, departures=1, departed_at=(4, 30)), (4, 30)),
    ("gone now and already gone at the last look: settled then",
     view(alive=False), view(alive=False), None),
    ("gone, and everything in the slot is delivered",
     view(), view(alive=False, position=(4, 30)), None),
    ("gone, and no segment left",
     view(), view(alive=False, segments=()), None),
]


@pytest.mark.parametrize(("before", "now", "mark"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_owed(before: View | None, now: View, mark: Position | None) -> None:
    assert owed(before, now) == mark


def test_a_state_left_by_another_incarnation_is_not_read_as_this_owners() -> None:
    stale = View("slot-7", Owner("i2", 3), True, None, None, SEGMENTS)  # look() drops a state of i1
    assert owed(view("i1"), stale) == (2, 50), "a new owner without a state of its own: what came before it"
