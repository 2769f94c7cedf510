"""The replica's own slot: the one it claims at start and appends its pushes to.

It claims the first `slot-N` under the root that no process holds, recovers it (a restarted replica
takes over what its predecessor left) and announces itself to the other replicas sharing the root.
Besides what every slot does (bridge/spool/slot.py), it appends (group-committed, fsync'd) while it
serves, vets pushes before they go straight to Kafka, joins and leaves, and claims the slots other
replicas left behind, for its process to deliver as `AdoptedSlot`s.
"""
from __future__ import annotations

import asyncio
import builtins
import logging
import time
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from . import files
from .adopted import AdoptedSlot, recover_slot
from .files import Files, claim
from .holds import Holds
from .ledger import Ledger, OnDamage
from .neighbours import Neighbours
from .slot import Slot, ignore_damage
from .slots import BEAT_S, PREFIX, SLOTS, Board, Heartbeats, left_behind, slot_number
from .writer import APPEND_DEADLINE_S, SpoolError, Writer, ignore_failure

log = logging.getLogger("bridge.spool")

SEGMENT_BYTES = 16 * 1024 * 1024
JOIN_WINDOW_S = 15.0
LEAVE_TIMEOUT_S = 3.0  # the longest a departure may take before the alive lock is let go instead
SELF_GAP_S = 2.0       # a heartbeat gap this long may have made the others (STALE_S) take this owner for gone


class OwnSlot(Slot):
    """Append (group-committed, fsync'd) while serving; read in order; acknowledge; adopt."""

    def __init__(self, ledger: Ledger, holds: Holds, lock_fd: int, io: Files, board: Board, heartbeats: Heartbeats,
                 max_bytes: int,
                 segment_bytes: int = SEGMENT_BYTES, on_damage: OnDamage = ignore_damage,
                 join_window_s: float = JOIN_WINDOW_S, append_deadline_s: float = APPEND_DEADLINE_S,
                 on_disk_failure: Callable[[str], object] = ignore_failure) -> None:
        number = slot_number(ledger.directory) or 0
        self._neighbours = Neighbours(ledger, holds, io, board, heartbeats, number, join_window_s)
        self._heartbeats = heartbeats
        self._beats = ThreadPoolExecutor(1, thread_name_prefix="spool-heartbeat")  # apart from fsyncs
        self._beating: asyncio.Task[None] | None = None
        self._writer = Writer(ledger, io, max_bytes, segment_bytes, self._neighbours, append_deadline_s,
                              on_disk_failure)
        super().__init__(ledger, holds, lock_fd, io, board, on_damage, appending=lambda: self._writer.busy)
        self._orphaned: list[str] = []  # slots with undelivered entries that nobody delivers (last look)

    @classmethod
    def open(cls, root: Path, max_bytes: int, segment_bytes: int = SEGMENT_BYTES,
             on_damage: OnDamage = ignore_damage, join_window_s: float = JOIN_WINDOW_S,
             append_deadline_s: float = APPEND_DEADLINE_S,
             on_disk_failure: Callable[[str], object] = ignore_failure) -> OwnSlot:
        """Claim the first free slot under `root`, recover it and announce this replica (blocking:
        before serving); it takes pushes once it joined. Raises SpoolError if no slot is free or
        the directory is unusable. `on_damage(n)` is told each time n damaged entries are found
        (and moved aside): at recovery, while reading, or set aside as "corrupt";
        `on_disk_failure(kind)` of each write that failed or stalled (bridge/spool/writer.py)."""
        try:
            files.make_directories(root)
            board, heartbeats = Board.open(root), Heartbeats.open(root)
            for number in range(SLOTS):
                directory = root / f"{PREFIX}{number}"
                lock_fd = claim(directory)
                if lock_fd is None:
                    continue
                try:
                    ledger, holds = recover_slot(directory, on_damage)
                    spool = cls(ledger, holds, lock_fd, Files(), board, heartbeats, max_bytes, segment_bytes, on_damage,
                                join_window_s, append_deadline_s, on_disk_failure)
                    spool._neighbours.announce()
                except BaseException:
                    files.close(lock_fd)
                    raise
                return spool
        except OSError as exc:
            raise SpoolError(f"spool directory {root} is not usable: {exc.strerror or exc}") from None
        raise SpoolError(f"all {SLOTS} slots under {root} are locked by other processes")

    # -- state ------------------------------------------------------------------------------------

    @property
    def max_bytes(self) -> int:
        return self._writer.max_bytes

    @property
    def accepting(self) -> bool:
        return not self.refusal

    @property
    def refusal(self) -> str:
        """Why appends are refused now ("" while they are accepted), leaving and joining aside."""
        return self._writer.refusal

    @property
    def failing(self) -> str:
        """What is wrong with the volume ("" when nothing is): a failed or stalled write."""
        return self._writer.failing

    @property
    def serving(self) -> bool:
        """The others see this replica taking pushes (it joined and has not left since)."""
        return self._neighbours.joined

    @property
    def orphaned(self) -> list[str]:
        """Slots with undelivered entries that nobody delivers (as of the last look)."""
        return list(self._orphaned)

    def order(self) -> dict[str, Any]:
        info = super().order()
        if self._orphaned:
            info["orphaned"] = list(self._orphaned)
        return info

    # -- taking pushes ----------------------------------------------------------------------------

    async def append(self, payload: builtins.bytes) -> None:  # (`bytes` here is the property)
        """Return once the entry is durable on disk; raise SpoolError if it cannot be kept."""
        self._mark(busy=True)  # before anything is written: others see it at once
        try:
            await self._writer.append(payload)
        finally:
            self._mark()

    async def vet_direct(self) -> bool:
        """Vet a push for going straight to Kafka: True when nothing is spooled or being written
        here, no hold is active, and nothing another slot holds is owed to the agents this replica
        serves. Looking at the other slots may take a hold first (written to disk): then False,
        and the push must be spooled behind it."""
        if not self.idle:
            return False
        try:
            await asyncio.wait_for(asyncio.shield(self._neighbours.vet()), self._writer.deadline_s)
        except (OSError, TimeoutError):
            return False  # spool it: the write's own vet tries again, and fails the push if it must
        return self.idle

    async def join(self) -> None:
        """Start taking pushes (at start, and when ready again after `leave`)."""
        await self._neighbours.join(self._new_segment)
        if self._beating is None:
            self._beating = asyncio.create_task(self._beat_forever(), name="spool-heartbeat")

    async def leave(self, timeout: float = LEAVE_TIMEOUT_S) -> None:
        """Stop taking pushes into the spool; return once the others can see where it ends (before
        the router hears of it: SIGTERM, not ready), within `timeout` even on a stalled volume."""
        await self._neighbours.leave(self._writer.quiet, timeout)

    async def _new_segment(self) -> None:
        """Appends from now on go to a new segment (the open one is closed)."""
        fd = self._ledger.stop_appends()
        if fd is not None:
            await self._io.run(files.close, fd)

    # -- the heartbeat ----------------------------------------------------------------------------

    async def _beat_forever(self) -> None:
        """Beat every BEAT_S, on a thread of its own. A gap longer than SELF_GAP_S (the process was
        frozen, its loop held up, or the volume stalled) means the others may have taken this owner
        for gone and the router may have moved its agents: it leaves (saying where its spool ends,
        which the pushes taken just before the gap may have moved) and joins again, so its window
        covers agents coming back."""
        loop, last = asyncio.get_running_loop(), None
        while True:
            await loop.run_in_executor(self._beats, self._heartbeats.beat, self._number)
            now = time.monotonic()
            if last is not None and now - last > SELF_GAP_S and self.serving:
                log.warning("spool %s: no heartbeat for %.1f s (the process was frozen or held up, or the volume "
                            "stalled); leaving and joining again", self.name, now - last)
                try:
                    await self.leave()
                    await asyncio.wait_for(self.join(), self._writer.deadline_s)
                except (OSError, TimeoutError) as exc:
                    log.error("spool %s: joining again failed (%s); the replica's readiness decides what next",
                              self.name, exc or "the volume stalled")
            last = time.monotonic()
            await asyncio.sleep(BEAT_S)

    # -- slots left behind ------------------------------------------------------------------------

    async def adopt_left_behind(self, delivering: Collection[str] = ()) -> list[AdoptedSlot]:
        """Claim and recover the slots of the root that no process holds and that have undelivered
        entries (`delivering`: those this process delivers already), for the caller to deliver and
        close. A replica that does not serve (leaving, not ready) adopts nothing: it only notes
        them as orphaned, for the others to adopt. A slot that cannot be recovered is released and
        tried again at the next call."""
        found = await left_behind(self._io, self.directory.parent, self._board, {self.name, *delivering})
        adopted, orphaned = [], []
        for directory, fd in found.claimed:
            if not self.serving:
                await self._io.run(files.close, fd)
                orphaned.append(directory.name)
                continue
            try:
                adopted.append(await AdoptedSlot.recover(directory, fd, self._board, self._on_damage))
            except Exception as exc:  # any failure: the slot stays for another look
                log.error("could not adopt spool slot %s left behind: %s; trying again", directory, exc)
                orphaned.append(directory.name)
        if orphaned != self._orphaned:
            if orphaned:
                log.warning("spool slots %s hold pushes and nobody delivers them", ", ".join(orphaned))
            self._orphaned = orphaned
        return adopted

    # -- closing ----------------------------------------------------------------------------------

    def _busy(self) -> bool:
        return self._writer.busy

    async def _before_close(self) -> None:
        if self._beating is not None:
            self._beating.cancel()
            await asyncio.gather(self._beating, return_exceptions=True)
        self._beats.shutdown(wait=False)
        await self._writer.close()
        await self._neighbours.close()
