"""The slots of one spool root as every process sharing the root sees them.

Replicas sharing a root (compose: one volume, a `slot-N` each) never talk to each other: each one
publishes what the others need in files of its own slot, and reads theirs.

    alive     "<incarnation> <first segment>", written when a process takes a slot to serve pushes
              from it, on a fresh inode that the process flocks for its whole life. Whoever finds
              that lock free knows the incarnation is gone (exited, or killed: the kernel drops the
              lock). Its first segment is where its own appends begin; lower segments were written
              by earlier owners of the slot.
    state     "<incarnation> <departures> <serving 0|1> <segment> <offset>": whether the owner takes
              pushes, how often it stopped taking them (it left: SIGTERM, or not ready), and where
              its spool ended the last time it did. Written, atomically, before the router can hear
              of the change (/readyz answers 503, the push port closes only once it is written).
    position  how far delivery went (bridge/spool/ledger.py); segment ids only grow.
    board     in the root: one byte per slot, mapped into every process (MAP_SHARED, one page
              cache): 1 while the slot holds or is writing undelivered pushes. Reading it costs no
              system call, so every push can look at it.
    heartbeats  in the root, mapped the same way: per slot, when its owner's process last showed
              that it runs (ms since the epoch, every BEAT_S). An owner whose `alive` lock is held
              but whose heartbeat is older than STALE_S is frozen, hung or cut off from its volume:
              the router may well have moved its agents, so the others treat it as gone until it
              beats again (and it, noticing the gap, leaves and joins again).

A look at another slot reads these without its lock. Each file is replaced atomically or only
grows, and every figure read only grows (positions, segment ids, departures), so a look that
races with the slot's owner sees an older state, never a torn one: a segment deleted between the
listing and its size is left out (it was delivered), a position file behind the deletions counts
from the first segment still there.

This only holds on one host's local file system (flock and a shared page cache); the compose
volume is one.
"""
from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

from . import files
from .files import Files
from .ledger import SEGMENT_SUFFIX, Position, parse_position

SLOTS = 64
PREFIX = "slot-"
BEAT_S = 0.5     # how often an owner's heartbeat is written
STALE_S = 3.0    # a live owner's heartbeat older than this counts as gone


def slot_number(directory: Path) -> int | None:
    number = directory.name.removeprefix(PREFIX)
    return int(number) if directory.name.startswith(PREFIX) and number.isdigit() else None


class Board:
    """The root's `board`: which slots hold or are writing undelivered pushes, as one byte each."""

    def __init__(self, shared: files.Shared) -> None:
        self._shared = shared
        self._map = shared.view

    @classmethod
    def open(cls, root: Path) -> Board:
        """Map the board of `root` (blocking: call it before serving, or on the spool's thread)."""
        return cls(files.Shared(root / "board", SLOTS))

    def mark(self, number: int, busy: bool) -> None:
        """Blocking: on the spool's thread."""
        self._shared.write(number, b"\x01" if busy else b"\x00")

    def busy(self, number: int) -> bool:
        return self._map[number] == 1

    def others_busy(self, number: int) -> bool:
        """Whether any slot but `number` is marked."""
        found = self._map.find(b"\x01")
        if found == number:
            found = self._map.find(b"\x01", number + 1)
        return found != -1

    def marked(self) -> list[int]:
        return [n for n, byte in enumerate(self._map[:SLOTS]) if byte == 1]


class Heartbeats:
    """The root's `heartbeats`: when each slot's owner last showed it runs."""

    def __init__(self, shared: files.Shared) -> None:
        self._shared = shared
        self._map = shared.view

    @classmethod
    def open(cls, root: Path) -> Heartbeats:
        """Map the heartbeats of `root` (blocking)."""
        return cls(files.Shared(root / "heartbeats", SLOTS * 8))

    def beat(self, number: int) -> None:
        """This moment, for slot `number` (blocking: the file lives on the spool volume)."""
        self._shared.write(number * 8, int(time.time() * 1000).to_bytes(8, "little"))

    def last(self, number: int) -> int:
        """When slot `number`'s owner last beat (ms since the epoch; 0: never)."""
        return int.from_bytes(self._map[number * 8:number * 8 + 8], "little")


@dataclass(frozen=True)
class Owner:
    incarnation: str
    first_segment: int

    def text(self) -> str:
        return f"{self.incarnation} {self.first_segment}\n"

    @classmethod
    def parse(cls, text: str) -> Owner | None:
        try:
            incarnation, first = text.split()
            return cls(incarnation, int(first))
        except ValueError:
            return None


@dataclass(frozen=True)
class State:
    incarnation: str
    departures: int = 0
    serving: bool = False
    departed_at: Position | None = None  # where the spool ended when the owner last left

    def text(self) -> str:
        segment, offset = self.departed_at or (0, 0)
        return f"{self.incarnation} {self.departures} {int(self.serving)} {segment} {offset}\n"

    @classmethod
    def parse(cls, text: str) -> State | None:
        try:
            incarnation, departures, serving, segment, offset = text.split()
            at = (int(segment), int(offset))
            return cls(incarnation, int(departures), serving == "1", at if at != (0, 0) else None)
        except ValueError:
            return None


@dataclass(frozen=True)
class View:
    """One look at a slot. `state` is only the state of the incarnation `alive` names."""

    name: str
    owner: Owner | None
    alive: bool
    state: State | None
    position: Position | None = None
    segments: tuple[tuple[int, int], ...] = ()  # (id, size), by id; only in a full look
    stale: bool = False  # alive, but its heartbeat is older than STALE_S

    @property
    def live(self) -> bool:
        """Its owner runs and shows it: alive, heartbeat fresh."""
        return self.alive and not self.stale

    @property
    def incarnation(self) -> str | None:
        return self.owner.incarnation if self.owner else None

    @property
    def departures(self) -> int:
        return self.state.departures if self.state else 0

    @property
    def serving(self) -> bool:
        return self.alive and self.state is not None and self.state.serving

    def end(self, below: int | None = None) -> Position | None:
        """Where the slot's entries end (those of segments below `below`); None: no entry."""
        kept = [s for s in self.segments if below is None or s[0] < below]
        return kept[-1] if kept else None

    def delivered(self, mark: Position) -> bool:
        """Whether every entry of the slot before `mark` is in Kafka (as far as its files say)."""
        if not self.segments or mark < (self.segments[0][0], 0):
            return True
        position = max(self.position or (0, 0), (self.segments[0][0], 0))
        return position >= mark


def look(directory: Path, full: bool = True, heartbeats: Heartbeats | None = None) -> View:
    """What the slot `directory` shows now (blocking: run it on the spool's thread). Without `full`,
    only who owns it and its state; with `heartbeats`, whether a live owner is stale."""
    found = files.look_alive(directory)
    owner = Owner.parse(found[0]) if found else None
    alive = bool(found and found[1] and owner)
    text = files.read_optional(directory / "state")
    state = State.parse(text) if text else None
    if state is not None and (owner is None or state.incarnation != owner.incarnation):
        state = None
    stale = False
    number = slot_number(directory)
    if alive and heartbeats is not None and number is not None:
        last = heartbeats.last(number)
        stale = last > 0 and time.time() * 1000 - last > STALE_S * 1000
    if not full:
        return View(directory.name, owner, alive, state, stale=stale)
    text = files.read_optional(directory / "position")  # before the listing: it may only lag behind it
    try:
        position = parse_position(text) if text else None
    except ValueError:
        position = None
    segments = tuple(files.segment_sizes(directory, SEGMENT_SUFFIX))
    return View(directory.name, owner, alive, state, position, segments, stale)


def owed(before: View | None, now: View) -> Position | None:
    """How far the slot must deliver before pushes this replica accepts from now on may go to Kafka,
    given `before`, what this replica last saw of it (None: nothing since this replica joined).
    Nothing is owed while the same owner kept taking pushes: its agents stayed with it. Otherwise
    the router may have moved its agents here, and what it (or its predecessors) spooled comes
    first: up to where a live owner stopped taking pushes, or everything an owner that is gone (or
    stale: alive but not beating) left. The cases are listed in docs/delivery.md."""
    same = before is not None and before.incarnation == now.incarnation
    mark: Position | None
    if now.live and now.owner is not None:
        if same and before is not None and before.live:
            if now.departures <= before.departures:
                return None
            mark = now.state.departed_at if now.state else None
        else:  # a new owner (or one back from stale): what earlier owners wrote, and where it stopped
            mark = now.end(below=now.owner.first_segment)
            if now.departures and now.state and now.state.departed_at:
                mark = max(mark or (0, 0), now.state.departed_at)
    else:
        if same and before is not None and not before.live:
            return None  # it was gone (or stale) when last seen: what it owed was settled then
        mark = now.end()
    if mark is None or now.delivered(mark):
        return None
    return mark


@dataclass
class LeftBehind:
    """What one look for slots left behind found under a root."""

    claimed: list[tuple[Path, int]] = field(default_factory=list)  # (slot, its lock descriptor)
    busy: list[str] = field(default_factory=list)  # held by another process (its owner, or an adopter)


async def left_behind(io: Files, root: Path, board: Board, skip: Collection[str] = ()) -> LeftBehind:
    """Claim every slot under `root` that no process holds and that has undelivered entries (for
    the caller to adopt, or to release); `skip`: slots not to look at (this process's own, those it
    already delivers). An empty slot found free is marked idle on the board and left. The slot
    lock decides every race between adopters, starting replicas and `cc-bridge drain`."""
    found = LeftBehind()
    for directory in await io.run(files.slot_directories, root, PREFIX):
        number = slot_number(directory)
        if number is None or directory.name in skip:
            continue
        fd = await io.run(files.claim, directory)
        if fd is None:
            found.busy.append(directory.name)
            continue
        view = await io.run(look, directory, True)
        end = view.end()
        if end is None or view.delivered(end):
            board.mark(number, False)
            await io.run(files.close, fd)
            continue
        found.claimed.append((directory, fd))
    return found
