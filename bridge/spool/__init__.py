"""The outage spool: a local append-only log of pushes Kafka could not take, durable before "0".

The process claims the first `slot-N` directory under BRIDGE_SPOOL_DIR it can lock (so replicas
may share one volume, and a restarted replica adopts a spool left behind) and recovers it. Then:
`append` returns once an entry is fsync'd; `read` hands out undelivered entries in order; `ack`
marks a prefix of them delivered; `set_aside` keeps an entry that can never be delivered out of
the way; `close` finishes the writes in progress and releases the slot.

The package, by concern:
    format.py    the frame layout and the scan that finds frames and damage in a segment's bytes
    files.py     every file operation, and the one thread they run on once the spool is open
    ledger.py    the slot's layout, its segments, the head and the counts (in memory)
    recovery.py  rebuilding the ledger of a claimed slot from its files, damage moved aside
    writer.py    group-committed appends, refusals (full, disk error, closed)
    reader.py    reading, acknowledging, deleting delivered segments, the position file
"""
from __future__ import annotations

import builtins
from pathlib import Path

from . import files
from .files import Files, claim
from .format import Entry
from .ledger import Ledger, OnDamage
from .reader import READ_BYTES, Folder, Reader
from .recovery import recover
from .writer import SpoolError, Writer

__all__ = ["Entry", "Folder", "Spool", "SpoolError", "claim"]

SEGMENT_BYTES = 16 * 1024 * 1024
SLOTS = 64


def _ignore(_count: int) -> None:
    pass


class Spool:
    """Append (group-committed, fsync'd), read in order, acknowledge delivered entries."""

    def __init__(self, ledger: Ledger, lock_fd: int, max_bytes: int, segment_bytes: int = SEGMENT_BYTES,
                 on_damage: OnDamage = _ignore) -> None:
        self._ledger = ledger
        self._lock_fd = lock_fd
        self._io = Files()
        self._writer = Writer(ledger, self._io, max_bytes, segment_bytes)
        self._reader = Reader(ledger, self._io, self._writer, on_damage)
        self._released = False

    @classmethod
    def open(cls, root: Path, max_bytes: int, segment_bytes: int = SEGMENT_BYTES,
             on_damage: OnDamage = _ignore) -> Spool:
        """Claim the first free slot under `root` and recover it. Raises SpoolError if none is free
        or the directory is unusable. `on_damage(n)` is told each time n damaged entries are found
        (and moved aside): at recovery, while reading, or set aside as "corrupt"."""
        try:
            files.make_directories(root)
            for number in range(SLOTS):
                directory = root / f"slot-{number}"
                lock_fd = claim(directory)
                if lock_fd is not None:
                    return cls.open_slot(directory, lock_fd, max_bytes, segment_bytes, on_damage)
        except OSError as exc:
            raise SpoolError(f"spool directory {root} is not usable: {exc.strerror or exc}") from None
        raise SpoolError(f"all {SLOTS} slots under {root} are locked by other processes")

    @classmethod
    def open_slot(cls, directory: Path, lock_fd: int, max_bytes: int, segment_bytes: int = SEGMENT_BYTES,
                  on_damage: OnDamage = _ignore) -> Spool:
        """Recover the slot `directory`, whose lock (`lock_fd`, from `claim`) the caller holds; the
        lock is released if that fails (OSError)."""
        try:
            ledger = recover(directory, on_damage)
        except BaseException:
            files.close(lock_fd)
            raise
        return cls(ledger, lock_fd, max_bytes, segment_bytes, on_damage)

    # -- state ------------------------------------------------------------------------------------

    @property
    def directory(self) -> Path:
        return self._ledger.directory

    @property
    def entries(self) -> int:
        """Durable entries not delivered yet."""
        return self._ledger.entries

    @property
    def bytes(self) -> int:
        """Bytes of every segment file on disk."""
        return self._ledger.bytes

    @property
    def max_bytes(self) -> int:
        return self._writer.max_bytes

    @property
    def oldest_ms(self) -> int | None:
        """Accepted-at time of the next entry to deliver."""
        return self._ledger.oldest_ms

    @property
    def idle(self) -> bool:
        """Nothing undelivered and nothing being written: pushes may go straight to Kafka."""
        return self._ledger.entries == 0 and not self._writer.busy

    @property
    def accepting(self) -> bool:
        return not self.refusal

    @property
    def refusal(self) -> str:
        """Why appends are refused now ("" while they are accepted)."""
        return self._writer.refusal

    # -- operations -------------------------------------------------------------------------------

    async def append(self, payload: builtins.bytes) -> None:  # (`bytes` here is the property above)
        """Return once the entry is durable on disk; raise SpoolError if it cannot be kept."""
        await self._writer.append(payload)

    async def read(self, limit: int = READ_BYTES) -> list[Entry]:
        """The next undelivered entries, in order, about `limit` bytes of them."""
        return await self._reader.read(limit)

    async def ack(self, entries: list[Entry]) -> None:
        """`entries` (a prefix of what `read` returned) are in Kafka."""
        await self._reader.ack(entries)

    async def set_aside(self, entry: Entry, folder: Folder) -> Path:
        """Keep an entry that can never be delivered in the slot's `folder` directory: "refused"
        (Kafka refuses it for good) or "corrupt" (its payload cannot be decoded; reported as
        damage). The caller then acknowledges it with the others. Returns where it is kept."""
        return await self._reader.set_aside(entry, folder)

    async def close(self) -> None:
        """Finish the writes in progress, then release the files and the lock."""
        if self._released:
            return
        self._released = True
        await self._writer.close()
        fd = self._ledger.stop_appends()
        if fd is not None:
            await self._io.run(files.close, fd)
        await self._io.run(files.close, self._lock_fd)
        self._io.shutdown()
