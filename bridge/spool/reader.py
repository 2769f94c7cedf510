"""Reading the spool in order and acknowledging what was delivered.

`read` hands out the next durable, undelivered entries a bounded piece at a time; `ack` moves the
head past a delivered prefix of them, deletes each segment once everything in it is delivered, and
records the head in the position file. Damage found while reading (bytes that changed after they
were written) is moved aside to corrupt/ and reported, never skipped silently.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from . import files
from .files import Files
from .format import HEADER, Entry, accepted_at, scan
from .ledger import Ledger, OnDamage, Position

log = logging.getLogger("bridge.spool")

READ_BYTES = 1024 * 1024     # read (and decoded) by the drainer at a time
Folder = Literal["corrupt", "refused"]


class Reader:
    """Reads and acknowledges a slot's entries. `appending()` says whether appends are waiting or
    being written (the open segment may still grow); a slot that takes no pushes has none."""

    def __init__(self, ledger: Ledger, io: Files, on_damage: OnDamage,
                 appending: Callable[[], bool] = lambda: False) -> None:
        self._ledger = ledger
        self._io = io
        self._on_damage = on_damage
        self._appending = appending

    async def read(self, limit: int = READ_BYTES, before: Position | None = None) -> list[Entry]:
        """The next durable, undelivered entries, in order: about `limit` bytes of them (more if
        one entry is larger), so memory stays bounded whatever the spool holds and the event loop
        is never held up by a whole segment. With `before`, only entries before that position
        (a hold's cut, always the end of an entry)."""
        ledger = self._ledger
        while (segment := ledger.oldest) is not None:
            head, size = ledger.head, segment.size
            if before is not None and (segment.id, head) >= before:
                return []
            if head >= size:
                if not await self._retire_head():
                    return []
                continue
            if before is not None and segment.id == before[0]:
                size = min(size, before[1])
            end = min(size, head + limit)
            data = await self._io.run(files.read_range, segment.path, head, end)
            entries: list[Entry] = []
            moved = 0
            for item in scan(data, segment.id):
                if isinstance(item, Entry):
                    entries.append(Entry(segment.id, head + item.offset, head + item.end, item.accepted_ms,
                                         item.payload))
                elif item.tail and end < size:  # an entry cut by the read's end: next time
                    break
                else:  # damaged after it was written: never skipped silently
                    await self._move_aside(segment.id, head + item.offset, data[item.offset:item.end])
                    moved += 1
            if moved:
                self._on_damage(moved)
            if entries:
                return entries
            if end < size:  # one entry larger than the limit
                limit = size - head
                continue
            ledger.skip_damage(size)  # only damage there
            await self._recount()
        return []

    async def ack(self, entries: list[Entry]) -> None:
        """`entries` (a prefix of what `read` returned) are in Kafka."""
        if not entries:
            return
        ledger = self._ledger
        ledger.delivered(entries[-1].end, len(entries))
        oldest = ledger.oldest
        if oldest is not None and ledger.head >= oldest.size:
            await self._retire_head()
        await self._recount()
        await self._io.run(files.save, ledger.position_path, ledger.position_text())

    async def set_aside(self, entry: Entry, folder: Folder) -> Path:
        """Keep `entry`'s payload, durable, in the slot's `folder` directory, so it no longer holds
        up the entries behind it; the caller then acknowledges it with the others. An entry set
        aside as "corrupt" is reported as damage."""
        target = self._ledger.aside_path(folder, entry.segment, entry.offset)
        await self._io.run(files.keep, target, entry.payload)
        if folder == "corrupt":
            self._on_damage(1)
        return target

    async def _move_aside(self, segment_id: int, offset: int, damaged: bytes) -> None:
        target = self._ledger.aside_path("corrupt", segment_id, offset)
        await self._io.run(files.keep, target, damaged)
        log.error("spool segment %d: %d damaged bytes at offset %d moved aside to %s; the entries around "
                  "them are delivered", segment_id, len(damaged), offset, target)

    async def _retire_head(self) -> bool:
        """Delete the fully delivered oldest segment, unless appends may still go to it."""
        ledger = self._ledger
        fd = None
        oldest = ledger.oldest
        if oldest is not None and oldest.fd is not None:  # the newest segment, open for appends
            if self._appending():
                return False
            fd = ledger.stop_appends()
        segment = ledger.retire_head()
        if fd is not None:
            await self._io.run(files.close, fd)
        await self._io.run(files.remove, segment.path)
        return bool(ledger.segments)

    async def _recount(self) -> None:
        """Recount after the head moved, and read the time of the next entry to deliver."""
        where = self._ledger.recount()
        if where is None:
            return
        path, at = where
        header = await self._io.run(files.read_range, path, at, at + HEADER.size)
        self._ledger.oldest_read(where, accepted_at(header))
