"""Holds: pushes a slot keeps back until other slots have delivered the older pushes of agents that
moved to it.

With an agent-affine router an agent moves only when the set of serving replicas changes: a
replica that joins (starts, or is ready again) takes agents from the others, and the agents of one
that leaves (dies, exits, turns not ready) spread over the rest. Either way the agent's older
pushes may still wait in another slot. So the replica whose set of agents grew takes a hold on its
own slot:

    cut    its own end at that moment: entries before it are delivered as usual, later ones wait;
    waits  for each slot that may hold older pushes of its new agents, a mark (that slot's end, or
           where its departing owner stopped) up to which that slot must deliver first.

While a hold is active the replica sends nothing straight to Kafka (every push is spooled) and
its drainer stops at the cut; the hold ends once every waited-for slot has delivered past its mark
(its position file, or no segment left there). The hold is written to the slot's `holds` file and
fsync'd before any entry after its cut is, so whoever delivers the slot later (the owner
restarted, a replica adopting it, `cc-bridge drain`) keeps it.

Why no hold waits forever is argued in docs/delivery.md ("Why every hold ends"), assuming every
slot can be delivered. One that cannot (its files unreadable, an adopter failing to recover it)
would stall every replica holding for it until their spools fill. So a slot waited for that shows
no delivery progress for `give_up_s` while Kafka is usable is given up: the waits for it are
dropped (and counted), and order across replicas is no longer kept for the agents that moved from
it; its pushes are still delivered whenever it can be read.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Collection
from dataclasses import dataclass, replace
from pathlib import Path

from . import files
from .files import Files
from .ledger import Position
from .slots import View, look

log = logging.getLogger("bridge.spool")

FILE = "holds"
GIVE_UP_S = 120.0  # a slot waited for that delivers nothing for this long, while Kafka is usable, is given up
Wait = tuple[str, Position]  # (slot directory name, mark)


@dataclass(frozen=True)
class Released:
    ended: bool = False             # a hold ended
    given_up: tuple[str, ...] = ()  # slots no longer waited for: no delivery progress (see the module)


@dataclass(frozen=True)
class Hold:
    taken_ms: int
    cut: Position
    waits: tuple[Wait, ...]
    appended: int = 0  # the ledger's appended count when taken (for the held-pushes figure; not kept)

    def text(self) -> str:
        waits = " ".join(f"{name}@{mark[0]}:{mark[1]}" for name, mark in self.waits)
        return f"{self.taken_ms} {self.cut[0]} {self.cut[1]} {waits}\n"

    @classmethod
    def parse(cls, line: str) -> Hold:
        taken, segment, offset, *waits = line.split()
        marks = []
        for wait in waits:
            name, _, at = wait.partition("@")
            mark_segment, _, mark_offset = at.partition(":")
            marks.append((name, (int(mark_segment), int(mark_offset))))
        return cls(int(taken), (int(segment), int(offset)), tuple(marks))


class Holds:
    """The active holds of one slot, as kept in its `holds` file."""

    def __init__(self, directory: Path, holds: list[Hold], give_up_s: float = GIVE_UP_S) -> None:
        self._directory = directory
        self._holds = holds
        self.give_up_s = give_up_s
        self._progress: dict[str, tuple[object, float | None]] = {}  # slot -> (what it showed, since; None: Kafka out)

    @classmethod
    def load(cls, directory: Path, rewritten: Collection[int]) -> Holds:
        """The holds kept in the slot (blocking: at recovery). A cut inside a segment that recovery
        rewrote (damage cut out, offsets moved) goes back to the start of that segment: waiting
        for more is safe, letting a later entry through is not."""
        holds = []
        text = files.read_optional(directory / FILE) or ""
        # After the last line end, at most an addition cut short: nothing after its cut was written.
        for line in text.split("\n")[:-1]:
            if not line.strip():
                continue
            try:
                hold = Hold.parse(line)
            except ValueError:
                log.error("spool %s: a hold that cannot be read (%r) is ignored; order across replicas is not "
                          "guaranteed for its entries", directory, line)
                continue
            if hold.cut[0] in rewritten:
                hold = replace(hold, cut=(hold.cut[0], 0))
            holds.append(hold)
        if holds:
            log.warning("spool %s keeps %d hold(s) from before this start: its entries after %s wait for %s",
                        directory, len(holds), min(h.cut for h in holds), describe(holds))
        return cls(directory, holds)

    @property
    def active(self) -> list[Hold]:
        return list(self._holds)

    @property
    def cut(self) -> Position | None:
        """Entries at or after this position wait (None: no hold)."""
        return min((h.cut for h in self._holds), default=None)

    def age_s(self) -> float:
        oldest = min((h.taken_ms for h in self._holds), default=None)
        return 0.0 if oldest is None else max(0.0, time.time() - oldest / 1000)

    def held(self, appended: int) -> int:
        """Entries appended since the oldest active hold of this process (0 without a hold)."""
        return appended - min((h.appended for h in self._holds), default=appended)

    def waiting_for(self) -> list[str]:
        return sorted({name for h in self._holds for name, _ in h.waits})

    async def add(self, io: Files, hold: Hold) -> None:
        """Keep `hold`, durably, before anything after its cut is written."""
        await io.run(files.add_line, self._directory / FILE, hold.text())
        if not self._holds:
            log.warning("holding: pushes %s accepts from now on (after %s) wait until %s delivered older pushes "
                        "of agents that may have moved here", self._directory.name, hold.cut, describe([hold]))
        self._holds.append(hold)

    async def release_delivered(self, io: Files, kafka_usable: bool = True) -> Released:
        """Look at the slots waited for; drop the marks they have delivered past, and the holds left
        with none (rewriting the holds file). A slot that delivered nothing for `give_up_s` while
        `kafka_usable` is given up (see the module's description)."""
        if not self._holds:
            return Released()
        names = {name for h in self._holds for name, _ in h.waits}
        views = {name: await io.run(look, self._directory.parent / name) for name in sorted(names)}
        stuck = self._stuck(views, kafka_usable)
        kept: list[Hold] = []
        ended: list[Hold] = []
        for hold in self._holds:
            waits = tuple((name, mark) for name, mark in hold.waits
                          if not views[name].delivered(mark) and name not in stuck)
            if waits:
                kept.append(replace(hold, waits=waits))
            else:
                ended.append(hold)
        if not ended and all(len(a.waits) == len(b.waits) for a, b in zip(kept, self._holds, strict=True)):
            return Released()
        if stuck:
            log.error("spool %s gives up waiting for %s: no delivery for %g s while Kafka was usable; order across "
                      "replicas is not kept for agents that moved from there", self._directory.name,
                      ", ".join(sorted(stuck)), self.give_up_s)
        await io.run(files.rewrite, self._directory / FILE, self._text(kept).encode())
        self._holds = kept
        if ended and not kept:
            first = min(h.taken_ms for h in ended)
            log.warning("hold released: the slots %s waited for delivered what they owed; %s delivers its pushes "
                        "again, %.1f s after the hold began", describe(ended), self._directory.name,
                        time.time() - first / 1000)
        return Released(bool(ended), tuple(sorted(stuck)))

    def _stuck(self, views: dict[str, View], kafka_usable: bool) -> set[str]:
        """The slots waited for that showed no delivery progress for `give_up_s` while Kafka was usable
        (the clock starts at the first look with Kafka usable after a change, or after an outage)."""
        now, stuck = time.monotonic(), set()
        for name, view in views.items():
            shown = (view.position, view.segments[:1])
            seen = self._progress.get(name)
            if seen is None or seen[0] != shown or not kafka_usable:
                self._progress[name] = (shown, now if kafka_usable else None)
            elif seen[1] is None:
                self._progress[name] = (shown, now)
            elif now - seen[1] > self.give_up_s:
                stuck.add(name)
        for name in set(self._progress) - set(views):
            del self._progress[name]
        return stuck

    @staticmethod
    def _text(holds: list[Hold]) -> str:
        return "".join(h.text() for h in holds)


def describe(holds: list[Hold]) -> str:
    """The slots waited for, each with its furthest mark."""
    furthest: dict[str, tuple[int, int]] = {}
    for name, mark in (w for h in holds for w in h.waits):
        furthest[name] = max(mark, furthest.get(name, mark))
    return ", ".join(f"{name} (up to {m[0]}:{m[1]})" for name, m in sorted(furthest.items())) or "nothing"
