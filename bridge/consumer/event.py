"""An event as a subscriber's handler gets it: the agent, the parsed event, the headers as text."""
from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson


@dataclass(frozen=True, slots=True)
class AgentEvent:
    """One event as the application gets it: the agent (record key), the event (the value, parsed)
    and the headers as text, plus where it was read."""

    agent: str
    event: Any
    headers: dict[str, str]
    topic: str
    partition: int
    offset: int

    @property
    def ce_id(self) -> str | None:
        return self.headers.get("ce_id")

    @property
    def ce_type(self) -> str | None:
        return self.headers.get("ce_type")

    @property
    def spooled(self) -> bool:
        return self.headers.get("bridge_spooled") == "true"

    @property
    def position(self) -> tuple[str, int, int]:
        """(topic, partition, offset): store it with what the event changed, and skip an event of
        the same agent whose position is not after the stored one (it was applied before a crash)."""
        return self.topic, self.partition, self.offset

    def is_after(self, stored: Iterable[Any] | None) -> bool:
        """Whether this event comes after `stored` (a `position` kept by the application, or None)."""
        if stored is None:
            return True
        topic, partition, offset = stored
        return (topic, partition) != (self.topic, self.partition) or self.offset > offset


Handler = Callable[[AgentEvent], Awaitable[None]]


def parse(value: bytes | None) -> Any:
    """The record value as JSON (what the event topics hold); other bytes are passed on as they are."""
    try:
        return orjson.loads(value) if value is not None else None
    except orjson.JSONDecodeError:
        return value
