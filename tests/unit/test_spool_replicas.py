"""Several spools under one root, as replicas sharing a volume use them: holds, marks, departures,
joins, adoption, on a real file system (no Kafka; a slot's owner "dies" by closing without leaving,
which is what the kernel does to its locks)."""
from __future__ import annotations

import asyncio
import builtins
import io
import os
import threading
import time
from pathlib import Path

import pytest

import bridge.spool.own as own_module
import bridge.spool.slot as slot_module
from bridge.spool import AdoptedSlot, OwnSlot, SpoolError, adopt_left_behind, claim
from bridge.spool import files as spool_files
from bridge.spool.holds import Hold, Holds
from bridge.spool.slots import Board, Heartbeats, State, look

MiB = 1 << 20


async def replica(root: Path, window: float = 0.001) -> OwnSlot:
    spool = OwnSlot.open(root, 64 * MiB, join_window_s=window)
    await spool.join()
    return spool


async def settled_in(*spools: OwnSlot) -> None:
    """Replicas past their (short) join window: a vet with nobody busy ends it, nothing is owed."""
    await asyncio.sleep(0.01)
    for spool in spools:
        assert await spool.vet_direct()


async def deliver(spool: OwnSlot) -> list[bytes]:
    """What the drainer delivers now: entries before every cut."""
    got = []
    while entries := await spool.read():
        got += [e.payload for e in entries]
        await spool.ack(entries)
    return got


@pytest.fixture(autouse=True)
def settle_at_once(monkeypatch):
    """A slot looks whether its holds can end at most every RELEASE_EVERY_S; here every time asked."""
    monkeypatch.setattr(slot_module, "RELEASE_EVERY_S", 0.0)


async def settle(spool: OwnSlot | AdoptedSlot) -> bool:
    return (await spool.release_holds()).ended


async def adopt(root: Path, name: str, board_of: OwnSlot) -> AdoptedSlot:
    fd = claim(root / name)
    assert fd is not None, f"{name} is held"
    return await AdoptedSlot.recover(root / name, fd, board_of._board)


async def test_a_gone_owners_pushes_come_before_what_its_agents_push_elsewhere(tmp_path):
    a, b = await replica(tmp_path), await replica(tmp_path)
    await settled_in(a, b)
    await a.append(b"x1")
    await a.append(b"x2")
    assert await b.vet_direct(), "the same owner keeps serving: nothing is owed"
    await a.close()  # killed: its agents move to b
    assert not await b.vet_direct() and b.holding
    assert b.order()["holding"]["waiting_for"] == ["slot-0"]
    await b.append(b"x3")
    assert await deliver(b) == [] and not b.deliverable
    assert not await settle(b)
    orphan = await adopt(tmp_path, "slot-0", b)
    assert not hasattr(orphan, "append"), "a slot delivered for a replica that is gone takes no pushes"
    assert await deliver(orphan) == [b"x1", b"x2"]
    assert await settle(b) and not b.holding
    assert await deliver(b) == [b"x3"]
    await orphan.close()
    await b.close()


async def test_entries_before_the_cut_go_while_the_hold_waits(tmp_path):
    a, b = await replica(tmp_path), await replica(tmp_path)
    await settled_in(a, b)
    await b.append(b"before")
    await a.append(b"a1")
    await a.close()
    await b.append(b"after")  # the write's own vet takes the hold, cut before this batch
    assert await deliver(b) == [b"before"]
    assert b.held_pushes == 1
    orphan = await adopt(tmp_path, "slot-0", b)
    await deliver(orphan)
    assert await settle(b)
    assert await deliver(b) == [b"after"]
    await orphan.close()
    await b.close()


async def test_a_hold_is_kept_in_the_slot_for_whoever_delivers_it_next(tmp_path):
    a, b = await replica(tmp_path), await replica(tmp_path)
    await settled_in(a, b)
    await a.append(b"a1")
    await a.close()
    await b.append(b"b1")
    assert b.holding
    await b.close()  # b is gone too, holding
    later = await adopt(tmp_path, "slot-1", b)
    assert later.holding and await deliver(later) == []
    orphan = await adopt(tmp_path, "slot-0", later)
    assert await deliver(orphan) == [b"a1"]
    assert await settle(later)
    assert await deliver(later) == [b"b1"]
    assert (tmp_path / "slot-1" / "holds").read_text() == ""
    await orphan.close()
    await later.close()


async def test_a_live_owner_that_leaves_says_where_its_spool_ends_and_takes_nothing_more(tmp_path):
    a, b = await replica(tmp_path), await replica(tmp_path)
    await settled_in(a, b)
    await a.append(b"a1")
    await a.leave()
    with pytest.raises(SpoolError, match="leaving"):
        await a.append(b"refused")
    assert a.accepting, "leaving is no reason to turn not ready"
    await b.append(b"b1")
    assert b.holding and await deliver(b) == []
    assert await deliver(a) == [b"a1"]  # a still delivers what it has
    assert await settle(b)
    assert await deliver(b) == [b"b1"]
    await a.join()  # ready again
    await a.append(b"a2")
    await a.close()
    await b.close()


async def test_a_joining_replica_waits_for_what_the_others_spooled_before_each_of_its_pushes(tmp_path):
    b = await replica(tmp_path)
    await settled_in(b)
    await b.append(b"b1")
    a = await replica(tmp_path, window=60)
    await a.append(b"a1")           # an agent moved here: its older pushes may be b1
    await b.append(b"b2")           # the router had not switched yet
    await a.append(b"a2")           # a second hold, b's mark moved
    assert len(a._holds.active) == 2
    await a.append(b"a3")           # b did not move: no new hold
    assert len(a._holds.active) == 2
    assert await deliver(a) == []
    entries = await b.read()
    await b.ack(entries[:1])        # b1 delivered: the first hold ends
    assert await settle(a)
    assert await deliver(a) == [b"a1"]
    await b.ack(entries[1:])
    assert await settle(a)
    assert await deliver(a) == [b"a2", b"a3"]
    await a.close()
    await b.close()


async def test_the_first_vet_after_the_join_window_holds_once_for_agents_that_push_only_later(tmp_path):
    b = await replica(tmp_path)
    await settled_in(b)
    await b.append(b"b1")
    a = await replica(tmp_path, window=0.01)
    await asyncio.sleep(0.02)
    assert not await a.vet_direct() and a.holding  # its agents may have older pushes in b1
    await deliver(b)
    assert await settle(a) and await a.vet_direct()
    await b.append(b"b2")
    assert await a.vet_direct(), "after the window, a serving owner's new pushes owe nothing"
    await a.close()
    await b.close()


async def test_replicas_joining_together_never_wait_for_each_other_forever(tmp_path):
    a = OwnSlot.open(tmp_path, 64 * MiB, join_window_s=60)
    b = OwnSlot.open(tmp_path, 64 * MiB, join_window_s=60)
    await asyncio.gather(a.join(), b.join())
    sent = {a: [], b: []}
    for n in range(30):  # interleaved: each batch of one waits for what the other had before it
        spool = (a, b)[n % 2]
        payload = f"{n}".encode()
        await spool.append(payload)
        sent[spool].append(payload)
    assert a.holding and b.holding, "each waits for the other"
    got = {a: [], b: []}
    for _ in range(200):
        for spool in (a, b):
            got[spool] += await deliver(spool)
            await settle(spool)
        if got == sent:
            break
    assert got == sent
    await a.close()
    await b.close()


async def test_a_scan_adopts_a_slot_left_with_entries_and_leaves_empty_ones(tmp_path):
    a, b, c = await replica(tmp_path), await replica(tmp_path), await replica(tmp_path)
    await settled_in(a, b, c)
    await a.append(b"a1")
    await a.close()
    await b.close()  # left empty
    adopted = await c.adopt_left_behind()
    assert [s.directory.name for s in adopted] == ["slot-0"]
    assert claim(tmp_path / "slot-1") is not None, "an empty slot is not kept"
    assert c._board.busy(0) and not c._board.busy(1)
    assert await deliver(adopted[0]) == [b"a1"]
    await adopted[0].close()
    assert not c._board.busy(0)
    await c.close()


async def test_left_behind_claims_free_slots_with_entries_and_names_the_held_ones(tmp_path):
    a, b, c = await replica(tmp_path), await replica(tmp_path), await replica(tmp_path)
    await settled_in(a, b, c)
    await a.append(b"a1")
    await b.append(b"b1")
    await a.close()
    await c.close()
    spools, busy = await adopt_left_behind(tmp_path)
    assert [s.directory.name for s in spools] == ["slot-0"] and busy == ["slot-1"]
    assert await deliver(spools[0]) == [b"a1"]
    await spools[0].close()
    await b.close()


async def test_segment_ids_only_grow_over_a_slots_life(tmp_path):
    spool = await replica(tmp_path)
    await settled_in(spool)
    await spool.append(b"one")
    await deliver(spool)
    assert (spool.directory / "position").read_text() == "2 0\n", "kept when empty: the next segment's start"
    await spool.close()
    spool = await replica(tmp_path)
    await spool.append(b"two")
    assert [int(p.stem) for p in spool.directory.glob("*.seg")] == [3]
    await spool.close()


def test_a_look_counts_from_the_first_segment_left_when_the_position_file_lags(tmp_path):
    slot = tmp_path / "slot-0"
    slot.mkdir()
    (slot / f"{5:020d}.seg").write_bytes(b"x" * 100)
    (slot / f"{6:020d}.seg").write_bytes(b"y" * 50)
    (slot / "position").write_text("3 70\n")  # segments 3 and 4 are deleted, the position not yet rewritten
    view = look(slot)
    assert view.end() == (6, 50) and view.end(below=6) == (5, 100)
    assert view.delivered((4, 900)) and not view.delivered((5, 1)) and not view.delivered((6, 50))
    (slot / "position").write_text("6 50\n")
    assert look(slot).delivered((6, 50))
    assert look(tmp_path / "slot-9").delivered((1, 0)), "no slot, nothing owed"


def test_holds_kept_in_a_slot_read_back(tmp_path):
    hold = Hold(1_700_000_000_000, (4, 120), (("slot-0", (2, 30)), ("slot-3", (7, 0))))
    assert Hold.parse(hold.text()) == hold
    (tmp_path / "holds").write_text(hold.text() + Hold(1, (9, 500), (("slot-1", (1, 1)),)).text() + "1700 4 1")
    holds = Holds.load(tmp_path, rewritten={9})
    assert [h.cut for h in holds.active] == [(4, 120), (9, 0)], \
        "an addition cut short is no hold; a cut in a rewritten segment goes to its start"
    assert holds.cut == (4, 120) and holds.waiting_for() == ["slot-0", "slot-1", "slot-3"]


def test_the_board_is_shared_between_mappings(tmp_path):
    one, two = Board.open(tmp_path), Board.open(tmp_path)
    assert not one.others_busy(3)
    two.mark(3, True)
    assert one.busy(3) and not one.others_busy(3) and one.others_busy(0) and one.marked() == [3]
    two.mark(3, False)
    assert not one.others_busy(0)


async def test_once_open_nothing_between_replicas_touches_a_file_from_the_event_loop(tmp_path, monkeypatch):
    """Joining, vetting, holding, settling, leaving, scanning and adopting: every file operation on
    the spools' threads."""
    a, b = await replica(tmp_path), await replica(tmp_path)
    await settled_in(a, b)
    seen: dict[str, list[bool]] = {}

    def watch(module, name: str, only_spool_paths: bool) -> None:
        real = getattr(module, name)

        def watched(*args, **kwargs):
            if not only_spool_paths or str(args[0]).startswith(str(tmp_path)):
                seen.setdefault(name, []).append(threading.current_thread() is threading.main_thread())
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, watched)

    for name in ("open", "unlink", "replace", "scandir"):
        watch(os, name, only_spool_paths=True)
    for name in ("fsync", "fdatasync", "pwrite", "ftruncate"):
        watch(os, name, only_spool_paths=False)
    watch(builtins, "open", only_spool_paths=True)
    watch(io, "open", only_spool_paths=True)
    monkeypatch.setattr(spool_files.fcntl, "flock", _watched_flock(seen, spool_files.fcntl.flock))

    await a.append(b"a1")
    await a.leave()
    await a.join()
    await a.close()
    await b.append(b"b1")
    adopted = await b.adopt_left_behind()
    await deliver(adopted[0])
    await settle(b)
    await deliver(b)
    await adopted[0].close()
    await b.leave()
    await b.close()
    assert {"open", "replace", "fdatasync", "flock"} <= set(seen), sorted(seen)
    on_loop = {name: sum(calls) for name, calls in seen.items() if any(calls)}
    assert on_loop == {}, "calls made on the event loop's thread"


def _watched_flock(seen: dict[str, list[bool]], real):
    def flock(fd, operation):
        seen.setdefault("flock", []).append(threading.current_thread() is threading.main_thread())
        return real(fd, operation)
    return flock


async def test_a_live_owner_that_stops_beating_is_taken_for_gone(tmp_path):
    a, b = await replica(tmp_path), await replica(tmp_path)
    await settled_in(a, b)
    await a.append(b"older push of an agent the router moves while a is frozen")
    a._beating.cancel()  # frozen: its lock is held, its heartbeat stops
    old = int((time.time() - 10) * 1000).to_bytes(8, "little")
    Heartbeats.open(tmp_path)._shared.write(0, old)
    assert not await b.vet_direct() and b.order()["holding"]["waiting_for"] == ["slot-0"]
    assert await deliver(a) == [b"older push of an agent the router moves while a is frozen"]
    assert await settle(b) and not b.holding
    await a.close()
    await b.close()


async def test_an_owner_that_notices_a_gap_in_its_heartbeat_leaves_and_joins_again(tmp_path, monkeypatch):
    monkeypatch.setattr(own_module, "SELF_GAP_S", 0.0)  # every beat looks late
    monkeypatch.setattr(own_module, "BEAT_S", 0.01)
    a = await replica(tmp_path)
    for _ in range(200):
        state = State.parse((a.directory / "state").read_text())
        if state is not None and state.departures >= 1 and state.serving:
            break
        await asyncio.sleep(0.01)
    assert state is not None and state.departures >= 1 and state.serving, "left, saying where it ended, and back"
    await a.close()


async def test_a_slot_that_delivers_nothing_for_long_while_kafka_is_usable_is_given_up(tmp_path):
    a, b = await replica(tmp_path), await replica(tmp_path)
    await settled_in(a, b)
    await a.append(b"in a slot nobody can deliver")
    await a.close()  # gone; suppose its files cannot be read, so nobody adopts it
    assert not await b.vet_direct() and b.holding
    b._holds.give_up_s = 0.05
    assert (await b.release_holds(kafka_usable=True)).given_up == ()
    await asyncio.sleep(0.1)
    assert (await b.release_holds(kafka_usable=False)).given_up == (), "during a Kafka outage nothing moves: wait"
    await asyncio.sleep(0.1)
    assert (await b.release_holds(kafka_usable=True)).given_up == ()
    await asyncio.sleep(0.1)
    released = await b.release_holds(kafka_usable=True)
    assert released.given_up == ("slot-0",) and released.ended and not b.holding
    await b.close()
