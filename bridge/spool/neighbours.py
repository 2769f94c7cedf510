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

It is the gate of the slot's writer (bridge/spool/writer.py): appends are taken while it serves,
and each batch is vetted before it is written. Slots left behind are found by
bridge/spool/slots.py's `left_behind` and adopted by the owner's front (bridge/spool/own.py).
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
from .slots import PREFIX, Board, Heartbeats, Owner, State, View, look, owed

log = logging.getLogger("bridge.spool")
LET_GO_S = 1.0


def look_at(directories: list[Path], full: bool, heartbeats: Heartbeats) -> list[View]:
    return [look(d, full, heartbeats) for d in directories]


class Neighbours:
    """The owner of a slot among the others of its root (see the module's description)."""

    def __init__(self, ledger: Ledger, holds: Holds, io: Files, board: Board, heartbeats: Heartbeats, number: int,
                 join_window_s: float) -> None:
        self._ledger, self._holds, self._io = ledger, holds, io
        self._board, self._heartbeats, self._number, self._join_window_s = board, heartbeats, number, join_window_s
        self._joining_until: float | None = None  # the join window's end; None once its last hold is taken
        self._marked: dict[str, Position] = {}    # the latest marks of join-window holds
        self._directory = ledger.directory
        self._state = State(os.urandom(8).hex())
        self._alive_fd: int | None = None
        self._seen: dict[str, View] = {}
        self._turn = asyncio.Lock()       # join and leave, one at a time
        self._vets_started = self._vets_done = 0
        self._vet: asyncio.Future[None] | None = None
        self._taking = False              # appends are taken (set after a join, cleared first when leaving)

    @property
    def serving(self) -> bool:
        """Appends are taken now (the writer's gate)."""
        return self._taking

    @property
    def joined(self) -> bool:
        """The others see this replica serving (its state says so)."""
        return self._state.serving

    def announce(self) -> None:
        """Tell the other processes this incarnation owns the slot (blocking: before serving, or on
        the spool's thread). Its own appends begin at the next segment."""
        self._heartbeats.beat(self._number)
        owner = Owner(self._state.incarnation, self._ledger.next_id)
        self._alive_fd = files.announce(self._directory, owner.text())
        files.save(self._directory / "state", self._state.text())

    async def join(self, new_segment: Callable[[], Awaitable[None]]) -> None:
        """Start taking pushes (see the module's description). After a departure that had to let go
        of the `alive` lock, this process comes back as a new incarnation whose appends begin in a
        new segment (`new_segment()` closes the open one), as any new owner's do."""
        async with self._turn:
            if self._state.serving:
                return
            if self._alive_fd is None:
                await new_segment()
                self._state = State(os.urandom(8).hex())
                await self._io.run(self.announce)
            await self._publish(replace(self._state, serving=True))
            self._joining_until, self._marked = time.monotonic() + self._join_window_s, {}
            self._taking = True

    async def leave(self, quiet: Callable[[], Awaitable[None]], timeout: float) -> None:
        """Stop taking pushes into the spool, wait for `quiet()` (the appends under way), and return
        once the others can see where the spool ends. When the volume does not let that be written
        within `timeout`, let go of the `alive` lock instead (no disk write: the kernel drops it), so
        the others see this owner gone and wait for everything in the slot. The same when the
        volume refuses the write (read-only, full, failing)."""
        async with self._turn:
            if not self._state.serving:
                return
            self._taking = False
            state = self._state
            try:
                async with asyncio.timeout(timeout):
                    await quiet()
                    await self._publish(replace(state, serving=False, departures=state.departures + 1,
                                                departed_at=self._ledger.end))
            except (OSError, TimeoutError) as exc:
                log.error("spool %s: the departure could not be written (%s); the slot's alive lock is released "
                          "instead, so the other replicas wait for everything in it", self._directory,
                          exc.strerror if isinstance(exc, OSError) else f"not within {timeout:g} s")
                self._state = replace(state, serving=False)
                await self._let_go()

    async def _let_go(self) -> None:
        """Close the `alive` file off the spool's thread (which may be stuck on the volume), bounded."""
        fd, self._alive_fd = self._alive_fd, None
        if fd is not None:
            closing = asyncio.get_running_loop().run_in_executor(None, files.close, fd)
            with contextlib.suppress(TimeoutError, OSError):
                await asyncio.wait_for(closing, LET_GO_S)

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
            glances = await self._io.run(look_at, busy, False, self._heartbeats)
            changed = [root / v.name for v in glances if joining or self._changed(v)]
            views = {v.name: v for v in glances}
            views.update((v.name, v) for v in await self._io.run(look_at, changed, True, self._heartbeats))
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
        return before is None or (before.incarnation, before.live, before.departures) != (
            now.incarnation, now.live, now.departures)

    async def _hold(self, waits: list[tuple[str, Position]]) -> None:
        hold = Hold(int(time.time() * 1000), self._ledger.end, tuple(waits), self._ledger.added)
        await self._holds.add(self._io, hold)

    async def _publish(self, state: State) -> None:
        await self._io.run(files.save, self._directory / "state", state.text())
        self._state = state

    async def close(self) -> None:
        self._taking = False
        if self._alive_fd is not None:
            await self._io.run(files.close, self._alive_fd)
            self._alive_fd = None
