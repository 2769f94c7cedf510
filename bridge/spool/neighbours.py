"""A serving replica among the other slots of its spool root (bridge/spool/slots.py, holds.py).

- It announces itself when it claims its slot (`alive`, and `state`: not serving yet).
- `leave`, before the router can hear that it stopped taking pushes (SIGTERM; /readyz 503): it
  refuses appends, waits for those under way, then writes where its spool ends.
- `join`, when it starts taking pushes (at start, and when ready again after it left). The router
  hands it agents once it sees it ready, a moment it cannot know; it only assumes that this happens
  within `join_window_s`. Their older pushes may be in other slots, spooled before or even after
  the join (until the router switched).
- `vet`, before each batch is written to its spool and before a push goes straight to Kafka, and
  only while the board shows another slot holding undelivered entries (otherwise nothing can be
  owed). It looks at those slots; the pushes it vets all arrived before it began (concurrent
  callers share the next vet, never one under way). It takes a hold, cut at its own end, when
    * a slot's owner is gone, or left (and maybe came back) since it last looked: everything that
      owner spooled comes first (it took no pushes after that, so this is exact); or
    * it is within its join window, or this is the first vet after it: the other slots' current
      ends come first. During the window every vetted batch gets such a hold (when those ends
      moved), so each moved agent's first pushes wait for what the other slots had when they
      arrived; the hold after the window covers the agents that push only later.
- `scan`, about twice a second: a slot that nobody holds (its `lock` free) with undelivered entries
  is adopted: claimed, recovered on a thread of its own, and delivered by this process in order,
  keeping that slot's own holds; the lock is released once it is empty, for a new replica to claim.
  The slot lock decides every race between adopters, starting replicas and `cc-bridge drain`.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

from . import files
from .files import Files
from .holds import Hold, Holds
from .ledger import Ledger, Position
from .slots import PREFIX, Board, Owner, State, View, look, owed, slot_number
from .writer import Writer

log = logging.getLogger("bridge.spool")

SCAN_S = 0.5
Adopt = Callable[[Path, int], Awaitable[None]]  # (slot directory, its lock descriptor)


def look_at(directories: list[Path], full: bool) -> list[View]:
    return [look(d, full) for d in directories]


class Neighbours:
    def __init__(self, ledger: Ledger, writer: Writer, holds: Holds, io: Files, board: Board, number: int,
                 join_window_s: float) -> None:
        self._ledger, self._writer, self._holds, self._io = ledger, writer, holds, io
        self._board, self._number, self._join_window_s = board, number, join_window_s
        self._joining_until: float | None = None  # the join window's end; None once its last hold is taken
        self._marked: dict[str, Position] = {}    # the latest marks of join-window holds
        self._directory = ledger.directory
        self._state = State(os.urandom(8).hex())
        self._alive_fd: int | None = None
        self._seen: dict[str, View] = {}
        self._turn = asyncio.Lock()       # join and leave, one at a time
        self._vets_started = self._vets_done = 0
        self._vet: asyncio.Future[None] | None = None
        self._scanner: asyncio.Task[None] | None = None
        self.adopted: set[str] = set()
        self.orphaned: list[str] = []      # slots with undelivered entries nobody delivers (last scan)

    @property
    def serving(self) -> bool:
        return self._state.serving

    def announce(self) -> None:
        """Tell the other processes this incarnation owns the slot (blocking: before serving)."""
        owner = Owner(self._state.incarnation, self._ledger.next_id)
        self._alive_fd = files.announce(self._directory, owner.text())
        files.save(self._directory / "state", self._state.text())

    async def join(self) -> None:
        """Start taking pushes (see the module's description)."""
        async with self._turn:
            if self._state.serving:
                return
            await self._publish(replace(self._state, serving=True))
            self._joining_until, self._marked = time.monotonic() + self._join_window_s, {}
            self._writer.serving = True

    async def leave(self) -> None:
        """Stop taking pushes into the spool; return once the others can see where it ends."""
        async with self._turn:
            if not self._state.serving:
                return
            self._writer.serving = False
            await self._writer.quiet()
            state = self._state
            await self._publish(replace(state, serving=False, departures=state.departures + 1,
                                        departed_at=self._ledger.end))

    async def vet(self) -> None:
        """Hold first if a slot with undelivered entries lost its owner, or its owner left, since last
        seen (a vet that begins after this call)."""
        if not self._board.others_busy(self._number):
            if self._joining_until is not None and time.monotonic() >= self._joining_until:
                self._joining_until = None  # nothing undelivered elsewhere: nothing can be owed any more
            return
        wanted = self._vets_started + 1
        while self._vets_done < wanted:
            if self._vet is None:
                self._vets_started += 1
                self._vet = asyncio.ensure_future(self._vet_once(self._vets_started))
            await asyncio.shield(self._vet)

    async def _vet_once(self, number: int) -> None:
        try:
            root = self._directory.parent
            busy = [root / f"{PREFIX}{n}" for n in self._board.marked() if n != self._number]
            joining = self._joining_until is not None
            glances = await self._io.run(look_at, busy, False)
            changed = [root / v.name for v in glances if joining or self._changed(v)]
            views = {v.name: v for v in glances}
            views.update((v.name, v) for v in await self._io.run(look_at, changed, True))
            waits = {name: mark for name, v in views.items() if (mark := owed(self._seen.get(name), v))}
            if joining:
                for name, v in views.items():
                    end = v.end()
                    if end is not None and not v.delivered(end) and end > self._marked.get(name, (0, 0)):
                        waits[name] = max(end, waits.get(name, end))
                self._marked.update(waits)
                if time.monotonic() >= (self._joining_until or 0.0):
                    self._joining_until = None
            if waits:
                await self._hold(sorted(waits.items()))
            self._seen.update(views)
        finally:
            self._vets_done, self._vet = number, None

    def _changed(self, now: View) -> bool:
        before = self._seen.get(now.name)
        return before is None or (before.incarnation, before.alive, before.departures) != (
            now.incarnation, now.alive, now.departures)

    async def _hold(self, waits: list[tuple[str, Position]]) -> None:
        hold = Hold(int(time.time() * 1000), self._ledger.end, tuple(waits), self._ledger.added)
        await self._holds.add(self._io, hold)

    async def _publish(self, state: State) -> None:
        await self._io.run(files.save, self._directory / "state", state.text())
        self._state = state

    # -- adoption ---------------------------------------------------------------------------------

    def watch(self, adopt: Adopt) -> None:
        """Scan the root for slots left behind, adopting them with `adopt`, until close."""
        if self._scanner is None:
            self._scanner = asyncio.create_task(self._scan_forever(adopt), name="spool-neighbours")

    async def _scan_forever(self, adopt: Adopt) -> None:
        problem = ""
        while True:
            await asyncio.sleep(SCAN_S)
            try:
                await self.scan(adopt)
                problem = ""
            except OSError as exc:
                if str(exc) != problem:
                    problem = str(exc)
                    log.error("looking for spool slots left behind under %s failed: %s; trying again",
                              self._directory.parent, exc)

    async def scan(self, adopt: Adopt) -> None:
        orphaned = []
        for directory in await self._io.run(files.slot_directories, self._directory.parent, PREFIX):
            number = slot_number(directory)
            if directory == self._directory or directory.name in self.adopted or number is None:
                continue
            fd = await self._io.run(files.claim, directory)
            if fd is None:
                continue  # its owner, or another process delivering it, holds it
            view = await self._io.run(look, directory, True)
            end = view.end()
            if end is None or view.delivered(end):
                self._board.mark(number, False)
                await self._io.run(files.close, fd)
                continue
            if not self._state.serving:  # leaving: others adopt it
                await self._io.run(files.close, fd)
                orphaned.append(directory.name)
                continue
            try:
                await adopt(directory, fd)
            except Exception as exc:  # any failure: the slot stays for another scan
                log.error("could not adopt spool slot %s left behind: %s; trying again", directory, exc)
                orphaned.append(directory.name)
            else:
                self.adopted.add(directory.name)
        if orphaned != self.orphaned:
            if orphaned:
                log.warning("spool slots %s hold pushes and nobody delivers them", ", ".join(orphaned))
            self.orphaned = orphaned

    def released(self, name: str) -> None:
        self.adopted.discard(name)

    async def close(self) -> None:
        if self._scanner is not None:
            self._scanner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._scanner
        if self._alive_fd is not None:
            await self._io.run(files.close, self._alive_fd)
            self._alive_fd = None
