"""A slot delivered for a replica that is gone: claimed (its lock was free), recovered on a thread
of its own, delivered in order keeping its holds, and released once empty for a new replica to
claim. It takes no pushes. Adopted by a serving replica (`OwnSlot.adopt_left_behind`) or by
`cc-bridge drain` (`adopt_left_behind` below).
"""
from __future__ import annotations

from pathlib import Path

from . import files
from .files import Files
from .holds import Holds
from .ledger import Ledger, OnDamage
from .recovery import recover
from .slot import Slot, ignore_damage
from .slots import Board, left_behind


def recover_slot(directory: Path, on_damage: OnDamage) -> tuple[Ledger, Holds]:
    """The ledger and holds of the slot `directory`, whose lock the caller holds (blocking)."""
    ledger = recover(directory, on_damage)
    return ledger, Holds.load(directory, ledger.rewritten)


class AdoptedSlot(Slot):
    @classmethod
    async def recover(cls, directory: Path, lock_fd: int, board: Board,
                      on_damage: OnDamage = ignore_damage) -> AdoptedSlot:
        """Recover the slot `directory` (its lock `lock_fd` held by the caller; released if that
        fails), to deliver what a process that is gone left there."""
        io = Files()
        try:
            ledger, holds = await io.run(recover_slot, directory, on_damage)
        except BaseException:
            await io.run(files.close, lock_fd)
            io.shutdown()
            raise
        return cls(ledger, holds, lock_fd, io, board, on_damage)


async def adopt_left_behind(root: Path, on_damage: OnDamage = ignore_damage) -> tuple[list[AdoptedSlot], list[str]]:
    """Every slot under `root` that no process holds and that has undelivered entries, adopted;
    and the names of the slots a running process holds."""
    io = Files()
    try:
        board = await io.run(Board.open, root)
        found = await left_behind(io, root, board)
        adopted: list[AdoptedSlot] = []
        try:
            for directory, fd in found.claimed:
                adopted.append(await AdoptedSlot.recover(directory, fd, board, on_damage))
        except BaseException:  # release what was claimed (the failed one released itself): next run
            for slot in adopted:
                await slot.close()
            for _, fd in found.claimed[len(adopted) + 1:]:
                await io.run(files.close, fd)
            raise
        return adopted, found.busy
    finally:
        io.shutdown()
