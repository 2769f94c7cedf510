"""What every claimed slot does, whoever claimed it: read its entries in order up to its holds'
cut, acknowledge them, set aside what can never be delivered, release holds whose slots delivered
what they owed, and close. `OwnSlot` (bridge/spool/own.py) adds the appends and the replica's
place among the others; `AdoptedSlot` (bridge/spool/adopted.py) is delivered for a replica that is
gone and takes no pushes.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import files
from .files import Files
from .format import Entry
from .holds import Holds, Released
from .ledger import Ledger, OnDamage
from .reader import READ_BYTES, Folder, Reader
from .slots import Board, slot_number

RELEASE_EVERY_S = 0.05  # a look costs a few system calls per slot waited for


def ignore_damage(_count: int) -> None:
    pass


class Slot:
    """A slot whose lock this process holds (`lock_fd`), its ledger and holds recovered."""

    def __init__(self, ledger: Ledger, holds: Holds, lock_fd: int, io: Files, board: Board,
                 on_damage: OnDamage = ignore_damage, appending: Callable[[], bool] = lambda: False) -> None:
        self._ledger, self._holds, self._lock_fd, self._io, self._board = ledger, holds, lock_fd, io, board
        self._number = slot_number(ledger.directory) or 0
        self._on_damage = on_damage
        self._reader = Reader(ledger, io, on_damage, appending)
        self._released_at = 0.0
        self._closed = False
        self._marked: bool | None = None  # what this slot last asked the board to show
        self._mark()

    # -- state ------------------------------------------------------------------------------------

    @property
    def directory(self) -> Path:
        return self._ledger.directory

    @property
    def name(self) -> str:
        return self._ledger.directory.name

    @property
    def entries(self) -> int:
        """Durable entries not delivered yet."""
        return self._ledger.entries

    @property
    def bytes(self) -> int:
        """Bytes of every segment file on disk."""
        return self._ledger.bytes

    @property
    def oldest_ms(self) -> int | None:
        """Accepted-at time of the next entry to deliver."""
        return self._ledger.oldest_ms

    @property
    def idle(self) -> bool:
        """Nothing undelivered, nothing being written, no hold."""
        return self._ledger.entries == 0 and not self._busy() and self._holds.cut is None

    @property
    def holding(self) -> bool:
        return self._holds.cut is not None

    @property
    def deliverable(self) -> bool:
        """Undelivered entries before every hold's cut are there."""
        cut = self._holds.cut
        return self._ledger.entries > 0 and (cut is None or self._ledger.head_position < cut)

    @property
    def held_pushes(self) -> int:
        return self._holds.held(self._ledger.added)

    def hold_age_s(self) -> float:
        return self._holds.age_s()

    def order(self) -> dict[str, Any]:
        """What /readyz and the metrics show of holds."""
        info: dict[str, Any] = {"slot": self.name}
        if self._holds.cut is not None:
            info["holding"] = {"since_s": round(self._holds.age_s(), 1), "waiting_for": self._holds.waiting_for(),
                               "held_pushes": self.held_pushes}
        return info

    # -- delivering -------------------------------------------------------------------------------

    async def read(self, limit: int = READ_BYTES) -> list[Entry]:
        """The next undelivered entries before every hold's cut, in order, about `limit` bytes of them."""
        return await self._reader.read(limit, self._holds.cut)

    async def ack(self, entries: list[Entry]) -> None:
        """`entries` (a prefix of what `read` returned) are in Kafka."""
        await self._reader.ack(entries)
        self._mark()

    async def set_aside(self, entry: Entry, folder: Folder) -> Path:
        """Keep an entry that can never be delivered in the slot's `folder` directory: "refused"
        (Kafka refuses it for good) or "corrupt" (its payload cannot be decoded; reported as
        damage). The caller then acknowledges it with the others. Returns where it is kept."""
        return await self._reader.set_aside(entry, folder)

    async def release_holds(self, kafka_usable: bool = True) -> Released:
        """Look whether the slots the holds wait for delivered what they owed (no more often than
        every RELEASE_EVERY_S), and end the holds that wait for nothing more; give up a slot that
        delivers nothing for long while `kafka_usable` (bridge/spool/holds.py)."""
        if self._holds.cut is None or time.monotonic() - self._released_at < RELEASE_EVERY_S:
            return Released()
        self._released_at = time.monotonic()
        return await self._holds.release_delivered(self._io, kafka_usable)

    async def close(self) -> None:
        """Release the files and the lock (once)."""
        if self._closed:
            return
        self._closed = True
        await self._before_close()
        fd = self._ledger.stop_appends()
        if fd is not None:
            await self._io.run(files.close, fd)
        self._mark()
        await self._io.run(files.close, self._lock_fd)
        self._io.shutdown()

    # -- for the two kinds of slot ----------------------------------------------------------------

    def _busy(self) -> bool:
        """Appends are waiting or being written (only a slot that takes pushes has any)."""
        return False

    async def _before_close(self) -> None:
        """What a kind of slot finishes before its files are released."""

    def _mark(self, busy: bool = False) -> None:
        """The root's board says whether this slot holds or is writing undelivered pushes. The board
        lives on the spool volume, so the byte is written on the spool's thread (in order with the
        slot's other file operations: a busy mark comes before the write it announces), never on the
        event loop, which a stalled volume would otherwise hold up."""
        marked = busy or self._ledger.entries > 0 or self._busy()
        if marked != self._marked:
            self._marked = marked
            self._io.submit(self._board.mark, self._number, marked)
