"""The outage spool: a local append-only log of pushes Kafka could not take, durable before "0".

Layout under BRIDGE_SPOOL_DIR: the process claims the first `slot-N` directory it can lock (so
replicas may share one volume, and a restarted replica adopts a spool left behind), holding
    lock           flock'd for the life of the process; contains the owner's pid
    <id>.seg       segments, written in order; a segment is deleted once every entry in it is delivered
    position       "<segment id> <offset>" of the next entry to deliver (advisory: losing it only
                   means entries are delivered again, with the same ce_id)
    corrupt/       damaged bytes moved aside, one file per damaged stretch

An entry is one frame (bridge/frames.py: length, time, CRC). `append` returns only after the frame
and, for a new segment, the directory entry are fsync'd; concurrent appends share one write and
one fsync (group commit). A write or fsync error fails the appends of that batch (the caller
answers 503) and the unsynced bytes are cut off again.

Recovery (`Spool.open`) checks every frame: a damaged stretch followed by a valid frame is moved
aside and counted, never skipped silently; an unfinished write at the end of the newest segment
was never acknowledged and is cut. New appends always start a new segment.
"""
from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .frames import HEADER, Entry, append_durably, frame, read_range, scan, sync_directory, write_durably

log = logging.getLogger("bridge.spool")

SEGMENT_BYTES = 16 * 1024 * 1024
READ_BYTES = 1024 * 1024     # read (and decoded) by the drainer at a time
SLOTS = 64
RETRY_AFTER_ERROR_S = 1.0
FULL_HEADROOM = 64 * 1024   # less free than this (or 1% of the limit) counts as full for readiness


class SpoolError(Exception):
    """The spool cannot keep an entry now (full, disk error, closed); the message says which."""


@dataclass
class Segment:
    id: int
    path: Path
    size: int                 # bytes known durable
    fd: int | None = None     # open for appending (the newest segment only)


class Spool:
    """Append (group-committed, fsync'd), read in order, acknowledge delivered entries."""

    def __init__(self, directory: Path, lock_fd: int, max_bytes: int, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.directory = directory
        self._lock_fd = lock_fd
        self.max_bytes = max_bytes
        self._segment_bytes = segment_bytes
        self._segments: list[Segment] = []   # oldest first; the last one may be open for appends
        self._head = 0                       # offset of the next entry to deliver, in _segments[0]
        self._next_id = 1                    # segment ids only grow, even across restarts
        self.entries = 0                     # durable entries not delivered yet
        self.bytes = 0                       # bytes of every segment file on disk
        self.oldest_ms: int | None = None    # accepted-at of the next entry to deliver
        self.corrupt_entries = 0             # damaged stretches moved aside since start
        self._pending: list[tuple[bytes, asyncio.Future]] = []
        self._pending_bytes = 0
        self._writing = False
        self._wake = asyncio.Event()
        self._writer: asyncio.Task | None = None
        self._io = ThreadPoolExecutor(1, thread_name_prefix="spool-io")
        self._broken_until = 0.0
        self.problem = ""
        self._closed = False

    # -- opening and recovery ------------------------------------------------------------------

    @classmethod
    def open(cls, root: Path, max_bytes: int, segment_bytes: int = SEGMENT_BYTES) -> Spool:
        """Claim the first free slot under `root` and recover it. Raises SpoolError if none is free
        or the directory is unusable."""
        try:
            root.mkdir(parents=True, exist_ok=True)
            for number in range(SLOTS):
                directory = root / f"slot-{number}"
                lock_fd = claim(directory)
                if lock_fd is not None:
                    spool = cls(directory, lock_fd, max_bytes, segment_bytes)
                    spool._recover()
                    return spool
        except OSError as exc:
            raise SpoolError(f"spool directory {root} is not usable: {exc.strerror or exc}") from None
        raise SpoolError(f"all {SLOTS} slots under {root} are locked by other processes")

    def _recover(self) -> None:
        ids = sorted(int(p.stem) for p in self.directory.glob("*.seg") if p.stem.isdigit())
        position = self._read_position()
        self._next_id = max([*ids, position[0] if position else 0]) + 1
        for index, segment_id in enumerate(ids):
            path = self._path(segment_id)
            if position and segment_id < position[0]:
                path.unlink()  # delivered before the last stop; only its deletion was lost
                continue
            start = position[1] if position and segment_id == position[0] else 0
            self._recover_segment(segment_id, path, start, newest=index == len(ids) - 1)
        if self.entries:
            log.warning("spool %s holds %d undelivered pushes (%d bytes) from before this start; they are "
                        "delivered to Kafka first", self.directory, self.entries, self.bytes)

    def _recover_segment(self, segment_id: int, path: Path, start: int, newest: bool) -> None:
        data = path.read_bytes()
        kept: list[Entry] = []
        damaged = False
        for item in scan(data, segment_id):
            if isinstance(item, Entry):
                kept.append(item)
            elif item.tail and newest:
                log.warning("spool segment %s: cut %d bytes of a write that never completed (never acknowledged)",
                            path.name, item.end - item.offset)
                damaged = True
            else:
                self._move_aside(segment_id, item.offset, data[item.offset:item.end])
                damaged = True
        if damaged:  # keep the valid frames only, switching files atomically; deliver it from its start
            data = b"".join(data[e.offset:e.end] for e in kept)
            temporary = path.with_suffix(".tmp")
            write_durably(temporary, data)
            os.replace(temporary, path)
            sync_directory(self.directory)
            kept, start = list(scan(data, segment_id)), 0
        if not self._segments:  # the oldest segment: delivery resumes at the recorded position
            self._head = start if start == len(data) or any(e.offset == start for e in kept) else 0
            kept = [e for e in kept if e.offset >= self._head]
        self._segments.append(Segment(segment_id, path, len(data)))
        self.bytes += len(data)
        self.entries += len(kept)
        if self.oldest_ms is None and kept:
            self.oldest_ms = kept[0].accepted_ms

    def _move_aside(self, segment_id: int, offset: int, damaged: bytes, folder: str = "corrupt") -> Path:
        aside = self.directory / folder
        aside.mkdir(exist_ok=True)
        target = aside / f"{segment_id:020d}-{offset}.bin"
        write_durably(target, damaged)
        if folder == "corrupt":
            self.corrupt_entries += 1
            log.error("spool segment %d: %d damaged bytes at offset %d moved aside to %s; the entries around "
                      "them are delivered", segment_id, len(damaged), offset, target)
        return target

    def set_aside(self, entry: Entry) -> Path:
        """Keep an entry Kafka refuses for good in `refused/` (its payload, durable), so it no longer
        holds up the entries behind it; the caller then acknowledges it with the others."""
        return self._move_aside(entry.segment, entry.offset, entry.payload, "refused")

    def _read_position(self) -> tuple[int, int] | None:
        try:
            segment, offset = (self.directory / "position").read_text().split()
            return int(segment), int(offset)
        except (OSError, ValueError):
            return None

    def _path(self, segment_id: int) -> Path:
        return self.directory / f"{segment_id:020d}.seg"

    # -- state ------------------------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        """Nothing undelivered and nothing being written: pushes may go straight to Kafka."""
        return self.entries == 0 and not self._pending and not self._writing

    @property
    def accepting(self) -> bool:
        return not self.refusal

    @property
    def refusal(self) -> str:
        """Why appends are refused now ("" while they are accepted)."""
        if self._closed:
            return "the spool is closed"
        if time.monotonic() < self._broken_until:
            return self.problem
        if self.max_bytes - self.bytes < max(FULL_HEADROOM, self.max_bytes // 100):
            return f"the spool is full ({self.bytes} of {self.max_bytes} bytes)"
        return ""

    # -- appending ----------------------------------------------------------------------------------

    async def append(self, payload: bytes) -> None:
        """Return once the entry is durable on disk; raise SpoolError if it cannot be kept."""
        if self._closed or time.monotonic() < self._broken_until:
            raise SpoolError(self.refusal)
        data = frame(payload, int(time.time() * 1000))
        if self.bytes + self._pending_bytes + len(data) > self.max_bytes:
            raise SpoolError(f"the spool is full ({self.max_bytes} bytes)")
        done = asyncio.get_running_loop().create_future()
        self._pending.append((data, done))
        self._pending_bytes += len(data)
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_loop(), name="spool-writer")
        self._wake.set()
        await done

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch, size = self._take_batch()
                self._writing = True
                try:
                    segment = self._segments[-1] if self._segments and self._segments[-1].fd is not None else None
                    if segment is None or (segment.size and segment.size + size > self._segment_bytes):
                        segment = await loop.run_in_executor(self._io, create_segment, self._path(self._next_id),
                                                             self._next_id)
                        self._next_id += 1
                        self._close_for_appends()
                        self._segments.append(segment)
                    await loop.run_in_executor(self._io, append_durably, segment.fd, b"".join(d for d, _ in batch),
                                               segment.size)
                except OSError as exc:
                    self._failed(exc)
                    error = SpoolError(self.problem)
                    for _, done in batch:
                        if not done.done():
                            done.set_exception(error)
                else:
                    segment.size += size
                    self.bytes += size
                    if self.entries == 0:
                        self.oldest_ms = HEADER.unpack_from(batch[0][0])[2]
                    self.entries += len(batch)
                    for _, done in batch:
                        if not done.done():
                            done.set_result(None)
                finally:
                    self._pending_bytes -= size
                    self._writing = False

    def _take_batch(self) -> tuple[list[tuple[bytes, asyncio.Future]], int]:
        taken, size = 0, 0
        for data, _ in self._pending:
            if taken and size + len(data) > self._segment_bytes:
                break
            taken += 1
            size += len(data)
        batch, self._pending = self._pending[:taken], self._pending[taken:]
        return batch, size

    def _close_for_appends(self) -> None:
        if self._segments and self._segments[-1].fd is not None:
            os.close(self._segments[-1].fd)
            self._segments[-1].fd = None

    def _failed(self, exc: OSError) -> None:
        self.problem = f"the spool cannot write to disk ({exc.strerror or exc})"
        self._broken_until = time.monotonic() + RETRY_AFTER_ERROR_S
        log.error("%s: pushes that need the spool are refused with 503 until a write succeeds", self.problem)

    # -- reading and acknowledging ------------------------------------------------------------------

    async def read(self, limit: int = READ_BYTES) -> list[Entry]:
        """The next durable, undelivered entries, in order: about `limit` bytes of them (more if
        one entry is larger), so memory stays bounded whatever the spool holds and the event loop
        is never held up by a whole segment."""
        loop = asyncio.get_running_loop()
        while self._segments:
            segment = self._segments[0]
            if self._head >= segment.size:
                if not self._retire_head():
                    return []
                continue
            end = min(segment.size, self._head + limit)
            data = await loop.run_in_executor(None, read_range, segment.path, self._head, end)
            entries: list[Entry] = []
            for item in scan(data, segment.id):
                if isinstance(item, Entry):
                    entries.append(Entry(segment.id, self._head + item.offset, self._head + item.end,
                                         item.accepted_ms, item.payload))
                elif item.tail and end < segment.size:  # an entry cut by the read's end: next time
                    break
                else:  # damaged after it was written: never skipped silently
                    self._move_aside(segment.id, self._head + item.offset, data[item.offset:item.end])
            if entries:
                return entries
            if end < segment.size:  # one entry larger than the limit
                limit = segment.size - self._head
                continue
            self._head = segment.size  # only damage there
            self._settle()
        return []

    def ack(self, entries: list[Entry]) -> None:
        """`entries` (a prefix of what `read` returned) are in Kafka."""
        if not entries:
            return
        self._head = entries[-1].end
        self.entries -= len(entries)
        if self._head >= self._segments[0].size:
            self._retire_head()
        self._settle()
        self._write_position()

    def _settle(self) -> None:
        """Recount after the head moved: nothing left on disk means nothing undelivered (damage
        found while reading may have covered entries that were counted when written)."""
        left = any(s.size > (self._head if i == 0 else 0) for i, s in enumerate(self._segments))
        self.entries = max(self.entries, 1) if left else 0
        self.oldest_ms = self._peek_time() if left else None

    def _retire_head(self) -> bool:
        """Delete the fully delivered oldest segment, unless appends may still go to it."""
        segment = self._segments[0]
        if segment.fd is not None:
            if self._pending or self._writing:
                return False
            self._close_for_appends()
        self._segments.pop(0)
        self._head = 0
        self.bytes -= segment.size
        with contextlib.suppress(FileNotFoundError):
            segment.path.unlink()
        return bool(self._segments)

    def _peek_time(self) -> int | None:
        for segment in self._segments:
            at = self._head if segment is self._segments[0] else 0
            if at + HEADER.size <= segment.size:
                with open(segment.path, "rb") as file:
                    file.seek(at)
                    return HEADER.unpack(file.read(HEADER.size))[2]
        return None

    def _write_position(self) -> None:
        if not self._segments:
            (self.directory / "position").unlink(missing_ok=True)
            return
        temporary = self.directory / "position.tmp"
        temporary.write_text(f"{self._segments[0].id} {self._head}\n")
        os.replace(temporary, self.directory / "position")

    # -- closing ------------------------------------------------------------------------------------

    async def close(self) -> None:
        """Finish the writes in progress, then release the files and the lock."""
        self._closed = True
        while self._pending or self._writing:  # noqa: ASYNC110 (replaced when the spool is split)
            await asyncio.sleep(0.01)
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
        for segment in self._segments:
            if segment.fd is not None:
                os.close(segment.fd)
                segment.fd = None
        self._io.shutdown(wait=True)
        os.close(self._lock_fd)


def claim(directory: Path) -> int | None:
    """An exclusive lock on `directory` (created if needed), or None if another process holds it."""
    directory.mkdir(exist_ok=True)
    fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def create_segment(path: Path, segment_id: int) -> Segment:
    """A new, empty segment open for appends, its directory entry made durable."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        sync_directory(path.parent)
    except OSError:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    return Segment(segment_id, path, 0, fd)
