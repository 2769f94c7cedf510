"""What a spool slot holds and where delivery stands: its segments, the head, the counts, and the
names of its files. Bookkeeping in memory only: the ledger owns these figures and changes them
through its methods; the writer, the reader and recovery call them and do the file operations that
go with each change (through bridge/spool/files.py).

Layout of a slot directory:
    lock           flock'd by the process using the slot (its owner, or one delivering it for an owner
                   that is gone); contains that process's pid
    <id>.seg       segments, written in order; a segment is deleted once every entry in it is delivered
    position       "<segment id> <offset>" of the next entry to deliver (advisory: losing it only
                   means entries are delivered again, with the same ce_id). Kept when the slot is
                   empty, so that segment ids only grow over the slot's life: other processes compare
                   positions of this slot across its owners (bridge/spool/slots.py)
    alive, state   who owns the slot and whether it takes pushes (bridge/spool/slots.py)
    holds          entries that wait for other slots (bridge/spool/holds.py)
    corrupt/       damaged bytes moved aside, one file per damaged stretch
    refused/       entries Kafka refuses for good, set aside by the drainer

A position (segment id, offset) orders the entries of one slot: an entry is before a position when
its own position is lower.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .format import HEADER

SEGMENT_SUFFIX = ".seg"
Position = tuple[int, int]  # (segment id, offset)
OnDamage = Callable[[int], object]  # told how many damaged entries were just found and moved aside


@dataclass
class Segment:
    id: int
    path: Path
    size: int                 # bytes known durable
    fd: int | None = None     # open for appending (the newest segment only)


class Ledger:
    """The slot's bookkeeping. Its figures are read through properties and changed only through
    the methods below, each of which names the event that changes them: a segment found at
    recovery, an append made durable, a delivered prefix, a segment retired."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._segments: list[Segment] = []   # oldest first; the last one may be open for appends
        self._head = 0                       # offset of the next entry to deliver, in segments[0]
        self._next_id = 1                    # segment ids only grow, even across restarts
        self._entries = 0                    # durable entries not delivered yet
        self._bytes = 0                      # bytes of every segment file on disk
        self._oldest_ms: int | None = None   # accepted-at of the next entry to deliver
        self._added = 0                      # entries appended since the slot was opened
        self._rewritten: set[int] = set()    # segments recovery rewrote (their offsets changed)

    # -- what it says --------------------------------------------------------------------------------

    @property
    def segments(self) -> tuple[Segment, ...]:
        return tuple(self._segments)

    @property
    def oldest(self) -> Segment | None:
        return self._segments[0] if self._segments else None

    @property
    def head(self) -> int:
        return self._head

    @property
    def next_id(self) -> int:
        return self._next_id

    @property
    def entries(self) -> int:
        return self._entries

    @property
    def bytes(self) -> int:
        return self._bytes

    @property
    def oldest_ms(self) -> int | None:
        return self._oldest_ms

    @property
    def added(self) -> int:
        return self._added

    @property
    def rewritten(self) -> frozenset[int]:
        return frozenset(self._rewritten)

    # -- names -------------------------------------------------------------------------------------

    def path(self, segment_id: int) -> Path:
        return self.directory / f"{segment_id:020d}{SEGMENT_SUFFIX}"

    @property
    def position_path(self) -> Path:
        return self.directory / "position"

    def aside_path(self, folder: str, segment_id: int, offset: int) -> Path:
        return self.directory / folder / f"{segment_id:020d}-{offset}.bin"

    @property
    def end(self) -> Position:
        """Where the next entry will be: every durable entry is before it, every later one is not."""
        if not self._segments:
            return self._next_id, 0
        return self._segments[-1].id, self._segments[-1].size

    @property
    def head_position(self) -> Position:
        """Where the next entry to deliver is (the end when there is none)."""
        if not self._segments:
            return self._next_id, 0
        return self._segments[0].id, self._head

    # -- recovery ------------------------------------------------------------------------------------

    def ids_from(self, highest: int) -> None:
        """New segments get ids above `highest` (the highest id seen on disk or in the position file)."""
        self._next_id = max(self._next_id, highest + 1)

    def found(self, segment_id: int, size: int, entries: int, first_ms: int | None, head: int = 0,
              rewritten: bool = False) -> None:
        """Recovery checked a segment of `size` bytes holding `entries` undelivered entries, the first
        accepted at `first_ms`; `head`: where delivery resumes in it (the oldest segment only)."""
        if not self._segments:
            self._head = head
        self._segments.append(Segment(segment_id, self.path(segment_id), size))
        self._bytes += size
        self._entries += entries
        if self._oldest_ms is None:
            self._oldest_ms = first_ms
        if rewritten:
            self._rewritten.add(segment_id)

    # -- appending -----------------------------------------------------------------------------------

    @property
    def open_segment(self) -> Segment | None:
        """The newest segment if it is still open for appends."""
        if self._segments and self._segments[-1].fd is not None:
            return self._segments[-1]
        return None

    def start_segment(self, fd: int) -> tuple[Segment, int | None]:
        """The segment just created at path(next_id), open for appends at `fd`, becomes the newest.
        Returns it, and the descriptor of the segment that took appends until now, for the caller
        to close."""
        previous = self.stop_appends()
        segment = Segment(self._next_id, self.path(self._next_id), 0, fd)
        self._segments.append(segment)
        self._next_id += 1
        return segment, previous

    def stop_appends(self) -> int | None:
        """The newest segment takes no more appends; returns its descriptor for the caller to close."""
        segment = self.open_segment
        if segment is None:
            return None
        fd, segment.fd = segment.fd, None
        return fd

    def appended(self, segment: Segment, size: int, count: int, first_ms: int) -> None:
        """`count` entries of `size` bytes in all, the first accepted at `first_ms`, are durable."""
        segment.size += size
        self._bytes += size
        if self._entries == 0:
            self._oldest_ms = first_ms
        self._entries += count
        self._added += count

    # -- delivering ----------------------------------------------------------------------------------

    def delivered(self, end: int, count: int) -> None:
        """`count` entries of the head segment, up to offset `end`, are in Kafka."""
        self._head = end
        self._entries -= count

    def skip_damage(self, end: int) -> None:
        """The head segment holds only damage (moved aside) up to `end`."""
        self._head = end

    def retire_head(self) -> Segment:
        """Forget the oldest segment (fully delivered); the caller deletes its file."""
        segment = self._segments.pop(0)
        self._head = 0
        self._bytes -= segment.size
        return segment

    def recount(self) -> tuple[Path, int] | None:
        """Recount after the head moved: nothing left on disk means nothing undelivered (damage
        found while reading may have covered entries that were counted when written). Returns
        where the next entry's header is, to read its time from (then `oldest_read`), or None."""
        left = any(s.size > (self._head if i == 0 else 0) for i, s in enumerate(self._segments))
        self._entries = max(self._entries, 1) if left else 0
        where = self.next_header()
        if where is None:
            self._oldest_ms = None
        return where

    def oldest_read(self, where: tuple[Path, int], accepted_ms: int) -> None:
        """The header at `where` (from `recount`) says `accepted_ms`; kept if it is still the next one."""
        if self.next_header() == where:
            self._oldest_ms = accepted_ms

    def next_header(self) -> tuple[Path, int] | None:
        for index, segment in enumerate(self._segments):
            at = self._head if index == 0 else 0
            if at + HEADER.size <= segment.size:
                return segment.path, at
        return None

    # -- the position file -----------------------------------------------------------------------------

    def position_text(self) -> str:
        """What the position file says now (with no segment left: the start of the next one)."""
        position = self.head_position
        return f"{position[0]} {position[1]}\n"


def parse_position(text: str) -> tuple[int, int]:
    """(segment id, offset) from a position file's text; ValueError if it is not one."""
    segment, offset = text.split()
    return int(segment), int(offset)
