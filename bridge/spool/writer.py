"""Appending to the spool: durable before it returns, many appends sharing one write (group commit).

`append` returns only after its frame and, for a new segment, the directory entry are fsync'd.
Appends that arrive while a write is in progress wait for the next one, and go to disk together
in one write and one fdatasync. New appends after a start always begin a new segment.

Every append has a deadline: when the disk has not finished within `deadline_s` the push is
refused (the caller answers 503) rather than held up to the gateway's own timeout; an append not
yet written by then is dropped, one already being written may still land (the gateway's retry
then makes a duplicate, with the same ce_id). A failed write (ENOSPC, EIO, a read-only file
system), or one that took longer than the deadline, makes the writer refuse every append until a
probe write succeeds: one small durable write in the slot, with room left on the file system,
tried every PROBE_EVERY_S. So a sick volume gives steady refusals, not a flapping replica. A
failed write fails every append of its batch and cuts the unsynced bytes off again.

Appends are taken only while the slot's gate (its owner among the other replicas,
bridge/spool/neighbours.py) says it serves; before each batch is written, the gate's `vet` may take
a hold whose cut is the end before the batch.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections.abc import Callable
from typing import Protocol

from . import files
from .files import Files
from .format import accepted_at, frame
from .ledger import Ledger, Segment

log = logging.getLogger("bridge.spool")

APPEND_DEADLINE_S = 3.0     # longest wait for the disk before a push that needs the spool is refused
PROBE_EVERY_S = 1.0         # how often a failing writer tries a probe write
FULL_HEADROOM = 64 * 1024   # less free than this (or 1% of the limit) counts as full for readiness

Pending = tuple[bytes, asyncio.Future[None]]
ERRORS = {errno.ENOSPC: "no_space", errno.EDQUOT: "no_space", errno.EIO: "io_error", errno.EROFS: "read_only"}


def failure_kind(exc: OSError) -> str:
    """The metric label of a write error: no_space, io_error, read_only, other."""
    return ERRORS.get(exc.errno or 0, "other")


def ignore_failure(_kind: str) -> None:
    pass


class SpoolError(Exception):
    """The spool cannot keep an entry now (full, disk error, closed); the message says which."""


class Gate(Protocol):
    """What the writer asks of the slot's owner before it writes."""

    @property
    def serving(self) -> bool:
        """Appends are taken now."""

    async def vet(self) -> None:
        """Take whatever hold the next batch needs (its cut: the end before the batch)."""


NOT_SERVING = "this replica takes no pushes into its spool now (it is leaving, or not ready)"


class Writer:
    """`on_failure(kind)` is told of each write that failed or stalled: no_space, io_error,
    read_only, stalled, other."""

    def __init__(self, ledger: Ledger, io: Files, max_bytes: int, segment_bytes: int, gate: Gate,
                 deadline_s: float = APPEND_DEADLINE_S, on_failure: Callable[[str], object] = ignore_failure) -> None:
        self._ledger = ledger
        self._gate = gate
        self._io = io
        self.max_bytes = max_bytes
        self._segment_bytes = segment_bytes
        self._deadline_s = deadline_s
        self._on_failure = on_failure
        self._pending: list[Pending] = []
        self._pending_bytes = 0
        self._writing_since: float | None = None  # a batch is being written, since then
        self._wake = asyncio.Event()
        self._quiet = asyncio.Event()   # set while nothing is pending or being written
        self._quiet.set()
        self._task: asyncio.Task[None] | None = None
        self._failure = ""              # why appends are refused until a probe write succeeds
        self._probe: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def _headroom(self) -> int:
        """Less room than this, in the spool or on its file system, counts as full."""
        return max(FULL_HEADROOM, self.max_bytes // 100)

    @property
    def deadline_s(self) -> float:
        """How long an append waits for the disk."""
        return self._deadline_s

    @property
    def busy(self) -> bool:
        """Appends are waiting or being written (the open segment may still grow)."""
        return bool(self._pending) or self._writing_since is not None

    @property
    def failing(self) -> str:
        """What is wrong with the disk ("" when nothing is): a write stalled now, or one that failed
        or stalled since the last successful probe."""
        since = self._writing_since
        if since is not None and time.monotonic() - since > self._deadline_s:
            return f"the spool's disk has not finished a write for {time.monotonic() - since:.1f} s"
        return self._failure

    @property
    def refusal(self) -> str:
        """Why appends are refused now ("" while they are accepted)."""
        if self._closed:
            return "the spool is closed"
        failing = self.failing
        if failing:
            return failing
        used = self._ledger.bytes
        if self.max_bytes - used < self._headroom:
            return f"the spool is full ({used} of {self.max_bytes} bytes)"
        return ""

    async def append(self, payload: bytes) -> None:
        """Return once the entry is durable on disk; raise SpoolError if it cannot be kept, or if
        the disk does not finish within the deadline."""
        failing = "the spool is closed" if self._closed else self.failing
        if failing:
            raise SpoolError(failing)
        if not self._gate.serving:
            raise SpoolError(NOT_SERVING)
        data = frame(payload, int(time.time() * 1000))
        if self._ledger.bytes + self._pending_bytes + len(data) > self.max_bytes:
            raise SpoolError(f"the spool is full ({self.max_bytes} bytes)")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((data, done))
        self._pending_bytes += len(data)
        self._quiet.clear()
        if self._task is None:
            self._task = asyncio.create_task(self._write_loop(), name="spool-writer")
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(done), self._deadline_s)
        except TimeoutError:
            done.cancel()  # not written yet: it never will be; being written: it may still land
            self._stalled()
            raise SpoolError(f"the spool's disk did not finish the write within {self._deadline_s:g} s") from None

    async def quiet(self) -> None:
        """Return once nothing is pending or being written."""
        await self._quiet.wait()

    async def close(self, timeout: float | None = None) -> bool:
        """Refuse new appends and return once the ones accepted are written (or failed); False if
        that took longer than `timeout` (what is still being written may yet land)."""
        self._closed = True
        quiet = True
        try:
            await asyncio.wait_for(self._quiet.wait(), timeout)
        except TimeoutError:
            quiet = False
        for task in (self._task, self._probe):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        return quiet

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while batch := self._take_batch():
                size = sum(len(d) for d, _ in batch)
                self._writing_since = started = time.monotonic()
                try:
                    await self._gate.vet()
                    segment, fd = await self._segment_for(size)
                    await self._io.run(files.append, fd, b"".join(d for d, _ in batch), segment.size)
                except OSError as exc:
                    self._failed(f"the spool cannot write to disk ({exc.strerror or exc})", failure_kind(exc))
                    error = SpoolError(self._failure)
                    for _, done in batch:
                        if not done.done():
                            done.set_exception(error)
                else:
                    self._ledger.appended(segment, size, len(batch), accepted_at(batch[0][0]))
                    for _, done in batch:
                        if not done.done():
                            done.set_result(None)
                    if time.monotonic() - started > self._deadline_s:
                        self._stalled()
                finally:
                    self._pending_bytes -= size
                    self._writing_since = None
            self._quiet.set()

    def _take_batch(self) -> list[Pending]:
        """The next appends to write together, up to a segment's size; those whose waiter gave up
        meanwhile (the deadline) are dropped, never written."""
        batch: list[Pending] = []
        size = 0
        while self._pending:
            data, done = self._pending[0]
            if done.cancelled():
                self._pending.pop(0)
                self._pending_bytes -= len(data)
                continue
            if batch and size + len(data) > self._segment_bytes:
                break
            batch.append(self._pending.pop(0))
            size += len(data)
        return batch

    async def _segment_for(self, size: int) -> tuple[Segment, int]:
        """The segment a batch of `size` bytes goes to, and its descriptor: the open one, or a new
        one when none is open or the batch would take a non-empty one past the segment size."""
        segment = self._ledger.open_segment
        if segment is not None and segment.fd is not None and not (
                segment.size and segment.size + size > self._segment_bytes):
            return segment, segment.fd
        fd = await self._io.run(files.create, self._ledger.path(self._ledger.next_id))
        segment, previous = self._ledger.start_segment(fd)
        if previous is not None:
            await self._io.run(files.close, previous)
        return segment, fd

    # -- failing and recovering -----------------------------------------------------------------

    def _stalled(self) -> None:
        if not self._failure:
            self._failed(f"the spool's disk took longer than {self._deadline_s:g} s to finish a write", "stalled")

    def _failed(self, problem: str, kind: str) -> None:
        self._on_failure(kind)
        if self._failure:
            return
        self._failure = problem
        log.error("%s: pushes that need the spool are refused with 503 until a probe write succeeds", problem)
        if self._probe is None and not self._closed:
            self._probe = asyncio.create_task(self._probe_until_healthy(), name="spool-probe")

    async def _probe_until_healthy(self) -> None:
        """Every PROBE_EVERY_S, one small durable write in the slot (with room left for appends);
        the first that succeeds within the deadline ends the refusals."""
        directory = self._ledger.directory
        try:
            while True:
                await asyncio.sleep(PROBE_EVERY_S)
                started = time.monotonic()
                try:  # one probe at a time: a stalled one is waited for, and then does not count
                    await self._io.run(files.probe, directory, self._headroom)
                except OSError:
                    continue
                if time.monotonic() - started > self._deadline_s:
                    continue
                log.warning("the spool writes again (%s); pushes that need it are taken", self._failure)
                self._failure = ""
                return
        finally:
            self._probe = None
