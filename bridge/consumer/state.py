"""Bookkeeping of the consumer helper (bridge/consumer.py). Pure, no I/O.

- `RecentIds`: which ce_ids each agent had lately, within a time window and a total capacity, so
  the memory is bounded by a setting and not by the number of agents ever seen;
- `Progress`: per partition, which fetched offsets the application finished, and so which offset
  may be committed.
"""
from __future__ import annotations

from collections import OrderedDict, deque
from datetime import datetime


def receipt_ms(headers: dict[str, str], fallback_ms: int) -> float:
    """The bridge's receipt time (ce_time) in ms; the record's own timestamp if it has none."""
    try:
        return datetime.fromisoformat(headers["ce_time"]).timestamp() * 1000
    except (KeyError, ValueError):
        return float(fallback_ms)


class RecentIds:
    """The ce_ids seen lately, per agent: those within `window_ms` of that agent's newest event,
    and at most `capacity` ids in all (the least recently active agents lose theirs first)."""

    def __init__(self, capacity: int, window_ms: float) -> None:
        self.capacity, self.window_ms = capacity, window_ms
        self._agents: OrderedDict[str, OrderedDict[str, float]] = OrderedDict()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    @property
    def agents(self) -> int:
        return len(self._agents)

    def seen(self, agent: str, ce_id: str, at_ms: float) -> bool:
        """True if `ce_id` was already seen for `agent` within the window; otherwise remember it."""
        ids = self._agents.get(agent)
        if ids is None:
            ids = self._agents[agent] = OrderedDict()
        else:
            self._agents.move_to_end(agent)
        while ids and next(iter(ids.values())) < at_ms - self.window_ms:
            ids.popitem(last=False)
            self._size -= 1
        if ce_id in ids:
            return True
        ids[ce_id] = at_ms
        self._size += 1
        while self._size > self.capacity:
            oldest_agent, oldest = next(iter(self._agents.items()))
            oldest.popitem(last=False)
            self._size -= 1
            if not oldest:
                del self._agents[oldest_agent]
        return False


class Progress:
    """One partition: the offsets handed out, in order, and which of them are finished."""

    def __init__(self) -> None:
        self._open: deque[int] = deque()
        self._done: set[int] = set()
        self._next: int | None = None
        self.committed: int | None = None

    def started(self, offset: int) -> None:
        self._open.append(offset)
        self._next = offset + 1

    def finished(self, offset: int) -> None:
        self._done.add(offset)
        while self._open and self._open[0] in self._done:
            self._done.discard(self._open.popleft())

    @property
    def busy(self) -> bool:
        return bool(self._open)

    def committable(self) -> int | None:
        """The offset to commit: the oldest unfinished one, or the next after all fetched."""
        return self._open[0] if self._open else self._next
