"""What a spool slot holds and where delivery stands: its segments, the head, the counts, and the
names of its files. Bookkeeping in memory only; the writer, the reader and recovery change it and
do the file operations that go with each change (through bridge/spool/files.py).

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
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.segments: list[Segment] = []    # oldest first; the last one may be open for appends
        self.head = 0                        # offset of the next entry to deliver, in segments[0]
        self.next_id = 1                     # segment ids only grow, even across restarts
        self.entries = 0                     # durable entries not delivered yet
        self.bytes = 0                       # bytes of every segment file on disk
        self.oldest_ms: int | None = None    # accepted-at of the next entry to deliver
        self.added = 0                       # entries appended since the slot was opened
        self.rewritten: set[int] = set()     # segments recovery rewrote (their offsets changed)

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
        if not self.segments:
            return self.next_id, 0
        return self.segments[-1].id, self.segments[-1].size

    @property
    def head_position(self) -> Position:
        """Where the next entry to deliver is (the end when there is none)."""
        if not self.segments:
            return self.next_id, 0
        return self.segments[0].id, self.head

    # -- appending -----------------------------------------------------------------------------------

    @property
    def open_segment(self) -> Segment | None:
        """The newest segment if it is still open for appends."""
        if self.segments and self.segments[-1].fd is not None:
            return self.segments[-1]
        return None

    def start_segment(self, fd: int) -> int | None:
        """The segment just created at path(next_id), open for appends at `fd`, becomes the newest.
        Returns the descriptor of the segment that took appends until now, for the caller to close."""
        previous = self.stop_appends()
        self.segments.append(Segment(self.next_id, self.path(self.next_id), 0, fd))
        self.next_id += 1
        return previous

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
        self.bytes += size
        if self.entries == 0:
            self.oldest_ms = first_ms
        self.entries += count
        self.added += count

    # -- delivering ----------------------------------------------------------------------------------

    def delivered(self, end: int, count: int) -> None:
        """`count` entries of the head segment, up to offset `end`, are in Kafka."""
        self.head = end
        self.entries -= count

    def retire_head(self) -> Segment:
        """Forget the oldest segment (fully delivered); the caller deletes its file."""
        segment = self.segments.pop(0)
        self.head = 0
        self.bytes -= segment.size
        return segment

    def settle(self) -> tuple[Path, int] | None:
        """Recount after the head moved: nothing left on disk means nothing undelivered (damage
        found while reading may have covered entries that were counted when written). Returns
        where the next entry's header is, to read its time from, or None."""
        left = any(s.size > (self.head if i == 0 else 0) for i, s in enumerate(self.segments))
        self.entries = max(self.entries, 1) if left else 0
        where = self.next_header()
        if where is None:
            self.oldest_ms = None
        return where

    def next_header(self) -> tuple[Path, int] | None:
        for segment in self.segments:
            at = self.head if segment is self.segments[0] else 0
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
