"""Appending to the spool: durable before it returns, many appends sharing one write (group commit).

`append` returns only after its frame and, for a new segment, the directory entry are fsync'd.
Appends that arrive while a write is in progress wait for the next one, and go to disk together
in one write and one fdatasync. A write or fsync error fails every append of that batch (the
caller answers 503), cuts the unsynced bytes off again, and refuses appends for
RETRY_AFTER_ERROR_S. New appends after a start always begin a new segment.

Appends are taken only while the slot's gate (its owner among the other replicas,
bridge/spool/neighbours.py) says it serves; before each batch is written, the gate's `vet` may take
a hold whose cut is the end before the batch.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

from . import files
from .files import Files
from .format import accepted_at, frame
from .ledger import Ledger, Segment

log = logging.getLogger("bridge.spool")

RETRY_AFTER_ERROR_S = 1.0
FULL_HEADROOM = 64 * 1024   # less free than this (or 1% of the limit) counts as full for readiness

Pending = tuple[bytes, asyncio.Future[None]]


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
    def __init__(self, ledger: Ledger, io: Files, max_bytes: int, segment_bytes: int, gate: Gate) -> None:
        self._ledger = ledger
        self._gate = gate
        self._io = io
        self.max_bytes = max_bytes
        self._segment_bytes = segment_bytes
        self._pending: list[Pending] = []
        self._pending_bytes = 0
        self._writing = False
        self._wake = asyncio.Event()
        self._quiet = asyncio.Event()   # set while nothing is pending or being written
        self._quiet.set()
        self._task: asyncio.Task[None] | None = None
        self._broken_until = 0.0
        self._problem = ""
        self._closed = False

    @property
    def busy(self) -> bool:
        """Appends are waiting or being written (the open segment may still grow)."""
        return bool(self._pending) or self._writing

    @property
    def refusal(self) -> str:
        """Why appends are refused now ("" while they are accepted)."""
        if self._closed:
            return "the spool is closed"
        if time.monotonic() < self._broken_until:
            return self._problem
        used = self._ledger.bytes
        if self.max_bytes - used < max(FULL_HEADROOM, self.max_bytes // 100):
            return f"the spool is full ({used} of {self.max_bytes} bytes)"
        return ""

    async def append(self, payload: bytes) -> None:
        """Return once the entry is durable on disk; raise SpoolError if it cannot be kept."""
        if self._closed or time.monotonic() < self._broken_until:
            raise SpoolError(self.refusal)
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
        await done

    async def quiet(self) -> None:
        """Return once nothing is pending or being written."""
        await self._quiet.wait()

    async def close(self) -> None:
        """Refuse new appends and return once the ones accepted are written (or failed)."""
        self._closed = True
        await self._quiet.wait()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch, size = self._take_batch()
                self._writing = True
                try:
                    await self._gate.vet()
                    segment, fd = await self._segment_for(size)
                    await self._io.run(files.append, fd, b"".join(d for d, _ in batch), segment.size)
                except OSError as exc:
                    self._failed(exc)
                    error = SpoolError(self._problem)
                    for _, done in batch:
                        if not done.done():
                            done.set_exception(error)
                else:
                    self._ledger.appended(segment, size, len(batch), accepted_at(batch[0][0]))
                    for _, done in batch:
                        if not done.done():
                            done.set_result(None)
                finally:
                    self._pending_bytes -= size
                    self._writing = False
            self._quiet.set()

    def _take_batch(self) -> tuple[list[Pending], int]:
        taken, size = 0, 0
        for data, _ in self._pending:
            if taken and size + len(data) > self._segment_bytes:
                break
            taken += 1
            size += len(data)
        batch, self._pending = self._pending[:taken], self._pending[taken:]
        return batch, size

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

    def _failed(self, exc: OSError) -> None:
        self._problem = f"the spool cannot write to disk ({exc.strerror or exc})"
        self._broken_until = time.monotonic() + RETRY_AFTER_ERROR_S
        log.error("%s: pushes that need the spool are refused with 503 until a write succeeds", self._problem)
