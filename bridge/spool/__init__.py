"""The outage spool: a local append-only log of pushes Kafka could not take, durable before "0".

The process claims the first `slot-N` directory under BRIDGE_SPOOL_DIR it can lock (so replicas
may share one volume, and a restarted replica takes over a spool left behind) and recovers it.
Then: `append` returns once an entry is fsync'd; `read` hands out undelivered entries in order;
`ack` marks a prefix of them delivered; `set_aside` keeps an entry that can never be delivered out
of the way; `close` finishes the writes in progress and releases the slot.

Replicas sharing a root keep each agent's pushes in order when the router moves agents between
them (bridge/spool/neighbours.py): `join` and `leave` tell the others when this one starts and
stops taking pushes; `bypass` says whether a push may go straight to Kafka (nothing spooled here,
no hold, nothing owed to another slot); `read` stops at a hold's cut; slots left behind by a
replica that is gone are adopted (`watch`) and delivered like this one's own.

The package, by concern:
    format.py      the frame layout and the scan that finds frames and damage in a segment's bytes
    files.py       every file operation, and the one thread they run on once the spool is open
    ledger.py      the slot's layout, its segments, the head and the counts (in memory)
    recovery.py    rebuilding the ledger of a claimed slot from its files, damage moved aside
    writer.py      group-committed appends, refusals (full, disk error, closed, not serving)
    reader.py      reading, acknowledging, deleting delivered segments, the position file
    slots.py       the root as every process sees it: owners, states, the board, what is owed
    holds.py       entries that wait until other slots delivered older pushes of moved agents
    neighbours.py  joining, leaving, vetting, adopting slots left behind
"""
from __future__ import annotations

import builtins
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from . import files
from .files import Files, claim
from .format import Entry
from .holds import Holds
from .ledger import Ledger, OnDamage
from .neighbours import Neighbours
from .reader import READ_BYTES, Folder, Reader
from .recovery import recover
from .slots import PREFIX, SLOTS, Board, View, look, slot_number
from .writer import SpoolError, Writer

__all__ = ["Entry", "Folder", "Spool", "SpoolError", "claim"]

SEGMENT_BYTES = 16 * 1024 * 1024
JOIN_WINDOW_S = 15.0
SETTLE_EVERY_S = 0.05  # a look costs a few system calls per slot waited for


def _ignore(_count: int) -> None:
    pass


def _recover(directory: Path, on_damage: OnDamage) -> tuple[Ledger, Holds]:
    ledger = recover(directory, on_damage)
    return ledger, Holds.load(directory, ledger.rewritten)


class Spool:
    """Append (group-committed, fsync'd), read in order, acknowledge delivered entries."""

    def __init__(self, ledger: Ledger, holds: Holds, lock_fd: int, io: Files, board: Board, max_bytes: int,
                 segment_bytes: int = SEGMENT_BYTES, on_damage: OnDamage = _ignore,
                 join_window_s: float | None = None) -> None:
        self._ledger, self._holds, self._lock_fd, self._io, self._board = ledger, holds, lock_fd, io, board
        self._number = slot_number(ledger.directory) or 0
        self._on_damage = on_damage
        self._writer = Writer(ledger, io, max_bytes, segment_bytes)
        self._neighbours: Neighbours | None = None
        if join_window_s is not None:  # the owner of the slot; otherwise it delivers it for one that is gone
            self._neighbours = Neighbours(ledger, self._writer, holds, io, board, self._number, join_window_s)
            self._writer.vet = self._neighbours.vet
        else:
            self._writer.not_serving = "this slot is delivered for a replica that is gone and takes no pushes"
        self._reader = Reader(ledger, io, self._writer, on_damage)
        self._settled = 0.0
        self._released = False
        self.on_close: Callable[[], None] | None = None
        self._adopt: Callable[[Spool], Awaitable[None]] | None = None
        self._mark()

    @classmethod
    def open(cls, root: Path, max_bytes: int, segment_bytes: int = SEGMENT_BYTES, on_damage: OnDamage = _ignore,
             join_window_s: float = JOIN_WINDOW_S) -> Spool:
        """Claim the first free slot under `root` and recover it (blocking: before serving); it takes
        pushes once it joined. Raises SpoolError if no slot is free or the directory is unusable.
        `on_damage(n)` is told each time n damaged entries are found (and moved aside): at
        recovery, while reading, or set aside as "corrupt"."""
        try:
            files.make_directories(root)
            board = Board.open(root)
            for number in range(SLOTS):
                directory = root / f"{PREFIX}{number}"
                lock_fd = claim(directory)
                if lock_fd is None:
                    continue
                try:
                    ledger, holds = _recover(directory, on_damage)
                    io = Files()
                    spool = cls(ledger, holds, lock_fd, io, board, max_bytes, segment_bytes, on_damage, join_window_s)
                    assert spool._neighbours is not None
                    spool._neighbours.announce()
                except BaseException:
                    files.close(lock_fd)
                    raise
                return spool
        except OSError as exc:
            raise SpoolError(f"spool directory {root} is not usable: {exc.strerror or exc}") from None
        raise SpoolError(f"all {SLOTS} slots under {root} are locked by other processes")

    @classmethod
    async def adopt(cls, directory: Path, lock_fd: int, board: Board, max_bytes: int,
                    on_damage: OnDamage = _ignore) -> Spool:
        """Recover the slot `directory` (its lock `lock_fd` held by the caller; released if that
        fails), to deliver what a process that is gone left there. It takes no pushes."""
        io = Files()
        try:
            ledger, holds = await io.run(_recover, directory, on_damage)
        except BaseException:
            await io.run(files.close, lock_fd)
            io.shutdown()
            raise
        return cls(ledger, holds, lock_fd, io, board, max_bytes, on_damage=on_damage)

    @classmethod
    async def left_behind(cls, root: Path, max_bytes: int, on_damage: OnDamage = _ignore) -> tuple[list[Spool],
                                                                                                list[str]]:
        """Every slot under `root` that no process holds and that has undelivered entries, adopted;
        and the names of the slots a running process holds."""
        io = Files()
        try:
            board = await io.run(Board.open, root)
            adopted, busy = [], []
            for directory in await io.run(files.slot_directories, root, PREFIX):
                fd = await io.run(claim, directory)
                if fd is None:
                    busy.append(directory.name)
                    continue
                view: View = await io.run(look, directory, True)
                end = view.end()
                if end is None or view.delivered(end):
                    board.mark(slot_number(directory) or 0, False)
                    await io.run(files.close, fd)
                    continue
                adopted.append(await cls.adopt(directory, fd, board, max_bytes, on_damage))
            return adopted, busy
        finally:
            io.shutdown()

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
        """Nothing undelivered, nothing being written, no hold."""
        return self._ledger.entries == 0 and not self._writer.busy and self._holds.cut is None

    @property
    def accepting(self) -> bool:
        return not self.refusal

    @property
    def refusal(self) -> str:
        """Why appends are refused now ("" while they are accepted), leaving and joining aside."""
        return self._writer.refusal

    @property
    def serving(self) -> bool:
        return self._neighbours is not None and self._neighbours.serving

    @property
    def holding(self) -> bool:
        return self._holds.cut is not None

    @property
    def deliverable(self) -> bool:
        """Undelivered entries before every hold's cut are there."""
        cut = self._holds.cut
        return self._ledger.entries > 0 and (cut is None or self._ledger.head_position < cut)

    def order(self) -> dict[str, Any]:
        """What /readyz and the metrics show of holds and adoptions."""
        info: dict[str, Any] = {"slot": self.directory.name}
        if self._holds.cut is not None:
            info["holding"] = {"since_s": round(self._holds.age_s(), 1), "waiting_for": self._holds.waiting_for(),
                               "held_pushes": self.held_pushes}
        if self._neighbours is not None and self._neighbours.orphaned:
            info["orphaned"] = list(self._neighbours.orphaned)
        return info

    @property
    def held_pushes(self) -> int:
        return self._holds.held(self._ledger.added)

    def hold_age_s(self) -> float:
        return self._holds.age_s()

    @property
    def orphaned(self) -> int:
        return len(self._neighbours.orphaned) if self._neighbours is not None else 0

    # -- operations -------------------------------------------------------------------------------

    async def append(self, payload: builtins.bytes) -> None:  # (`bytes` here is the property above)
        """Return once the entry is durable on disk; raise SpoolError if it cannot be kept."""
        self._board.mark(self._number, True)  # before anything is written: others see it at once
        try:
            await self._writer.append(payload)
        finally:
            self._mark()

    async def bypass(self) -> bool:
        """Whether a push may go straight to Kafka now: nothing spooled here, no hold, and nothing
        another slot holds is owed to the agents this replica serves (see neighbours.py)."""
        if not self.idle:
            return False
        if self._neighbours is not None:
            try:
                await self._neighbours.vet()
            except OSError:
                return False  # spool it: the write's own vet tries again, and fails the push if it must
        return self.idle

    async def join(self) -> None:
        """Start taking pushes (at start, and when ready again after `leave`)."""
        if self._neighbours is not None:
            await self._neighbours.join()

    async def leave(self) -> None:
        """Stop taking pushes into the spool, before the router hears of it (SIGTERM, not ready)."""
        if self._neighbours is not None:
            await self._neighbours.leave()

    def watch(self, adopt: Callable[[Spool], Awaitable[None]]) -> None:
        """Adopt slots left behind by processes that are gone, handing each to `adopt` (which
        delivers it, then closes it), until close."""
        self._adopt = adopt
        if self._neighbours is not None:
            self._neighbours.watch(self._take)

    async def _take(self, directory: Path, lock_fd: int) -> None:
        spool = await Spool.adopt(directory, lock_fd, self._board, self.max_bytes, self._on_damage)
        neighbours = self._neighbours
        if neighbours is not None:
            spool.on_close = lambda: neighbours.released(directory.name)
        if self._adopt is not None:
            await self._adopt(spool)

    async def read(self, limit: int = READ_BYTES) -> list[Entry]:
        """The next undelivered entries before every hold's cut, in order, about `limit` bytes of them."""
        return await self._reader.read(limit, self._holds.cut)

    async def settle(self) -> bool:
        """Let holds go once the slots they wait for delivered what they owed (looked at no more
        often than every SETTLE_EVERY_S); True if one ended."""
        if self._holds.cut is None or time.monotonic() - self._settled < SETTLE_EVERY_S:
            return False
        self._settled = time.monotonic()
        return await self._holds.settle(self._io)

    async def ack(self, entries: list[Entry]) -> None:
        """`entries` (a prefix of what `read` returned) are in Kafka."""
        await self._reader.ack(entries)
        self._mark()

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
        if self._neighbours is not None:
            await self._neighbours.close()
        fd = self._ledger.stop_appends()
        if fd is not None:
            await self._io.run(files.close, fd)
        self._mark()
        await self._io.run(files.close, self._lock_fd)
        self._io.shutdown()
        if self.on_close is not None:
            self.on_close()

    def _mark(self) -> None:
        self._board.mark(self._number, self._ledger.entries > 0 or self._writer.busy)
