"""The drainer: a spool's entries to Kafka, in the order they were accepted.

It publishes a read's entries in waves: an entry joins a wave unless an earlier entry of the same
agent is not yet acknowledged, so entries of one agent are never in flight together and a failure
can never let a later one of them overtake an earlier one. Each wave is one batched publish (a
Kafka batch per partition); a wave's entries are acknowledged to the spool once Kafka acknowledged
them. A spool that holds (bridge/spool/holds.py) is drained up to the hold's cut only.

A disk error while reading or acknowledging is counted and tried again (entries published but not
acknowledged to the spool are published again later, with the same ce_id); it never stops the
drainer. An entry Kafka refuses for good (too large) is set aside in the spool's `refused/`, one
that cannot be decoded in `corrupt/`, so neither holds up the entries behind it.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Protocol

import msgpack

from .metrics import Metrics
from .outage import Outage
from .publisher import PublishError
from .records import Record
from .spool import Entry, OwnSlot, Released, Slot, SpoolError

log = logging.getLogger("bridge.delivery")
SPOOLED_HEADER = ("bridge_spooled", b"true")
DRAIN_CHUNK = 200           # entries decoded, published and acknowledged to the spool together
DRAIN_RETRY_S = 1.0
HOLD_POLL_S = 0.05          # how often a held spool looks whether the slots it waits for delivered
DRAIN_PUBLISH_TIMEOUT_S = 30.0  # nobody waits on a drained entry: give Kafka the producer's own timeout


def encode(records: list[Record]) -> bytes:
    packed: bytes = msgpack.packb([(r.topic, r.key, r.value, r.headers) for r in records], use_bin_type=True)
    return packed


def decode(payload: bytes) -> list[Record]:
    return [Record(topic, key, value, [*map(tuple, headers), SPOOLED_HEADER])
            for topic, key, value, headers in msgpack.unpackb(payload, raw=False)]  # type: ignore[attr-defined]


def waves(records: list[list[Record]]) -> list[list[int]]:
    """Indexes of `records` (one list per spool entry) grouped so that no wave holds two entries of
    one agent, and an agent's entries are in successive waves in their order."""
    result: list[list[int]] = []
    next_wave: dict[bytes | None, int] = {}
    for index, batch in enumerate(records):
        keys = {r.key for r in batch if r.key is not None}
        wave = max((next_wave.get(k, 0) for k in keys), default=0)
        if wave == len(result):
            result.append([])
        result[wave].append(index)
        for key in keys:
            next_wave[key] = wave + 1
    return result



class Batches(Protocol):
    """What the drainer needs of the publisher."""

    @property
    def ready(self) -> bool: ...

    async def publish_batch(self, records: list[Record], timeout: float | None = None) -> None: ...


class Drainer:
    """Drains slots through `publisher`. `wake()`: there is new work (a push was spooled). `outage`
    hears whenever the replica's own slot (the one `run` drains) is idle."""

    def __init__(self, publisher: Batches, metrics: Metrics, outage: Outage | None = None) -> None:
        self._publisher = publisher
        self._metrics = metrics
        self._outage = outage or Outage()
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def deliver(self, spool: Slot, deadline: float | None = None) -> bool:
        """Drain `spool` until it is empty (True), or until `deadline` (monotonic) passes (False)."""
        failing = ""
        while spool.entries and (deadline is None or time.monotonic() < deadline):
            failing = await self._drain_step(spool, deadline, failing)
        return spool.entries == 0

    async def run(self, spool: OwnSlot) -> None:
        """Deliver the replica's own slot for as long as the process runs. A disk error while reading
        or acknowledging is counted and tried again (entries published but not acknowledged to the
        spool are published again later, with the same ce_id); it never stops the drainer."""
        failing = ""
        while True:
            if spool.idle and self._outage.on:
                self._outage.idle()
            failing = await self._drain_step(spool, None, failing)

    async def _drain_step(self, spool: Slot, deadline: float | None, failing: str) -> str:
        """One step of draining; returns the problem it ran into, if it is still the same one."""
        try:
            await self._drain_some(spool, deadline)
        except (OSError, SpoolError) as exc:
            self._metrics.drain_errors.inc()
            if str(exc) != failing:  # once per distinct problem, not once a second
                log.error("draining the spool %s failed: %s; trying again every %g s", spool.directory, exc,
                          DRAIN_RETRY_S)
            await asyncio.sleep(DRAIN_RETRY_S)
            return str(exc)
        return ""

    async def _drain_some(self, spool: Slot, deadline: float | None = None) -> None:
        if not spool.deliverable or not self._publisher.ready:
            released = await spool.release_holds(self._publisher.ready) if spool.entries else Released()
            if released.given_up:
                self._metrics.hold_waits_given_up.inc(len(released.given_up))
            if released.ended:
                return  # a hold ended: go on at once
            self._wake.clear()
            wait = HOLD_POLL_S if spool.holding else DRAIN_RETRY_S
            if deadline is not None:
                wait = max(0.0, min(wait, deadline - time.monotonic()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)
            return
        entries = await spool.read()
        if not entries:
            await asyncio.sleep(0.01)
            return
        for start in range(0, len(entries), DRAIN_CHUNK):
            chunk = entries[start:start + DRAIN_CHUNK]
            if not await self._publish_chunk(spool, chunk):
                self._metrics.drain_errors.inc()
                await asyncio.sleep(DRAIN_RETRY_S)
                return
            await spool.ack(chunk)
            self._metrics.drained.inc(len(chunk))

    async def _publish_chunk(self, spool: Slot, chunk: list[Entry]) -> bool:
        """Each wave in one batched publish (a wave holds one entry per agent at most), waiting
        for its acknowledgement before the next; pushes arriving meanwhile are served between."""
        records = [await self._decode(spool, entry) for entry in chunk]
        for wave in waves(records):
            try:
                await self._publisher.publish_batch([r for i in wave for r in records[i]], DRAIN_PUBLISH_TIMEOUT_S)
            except PublishError as exc:
                if not (exc.refused_records and await self._set_aside_refused(spool, chunk, records, wave)):
                    log.warning("draining the spool paused: %s (a wave of %d entries not acknowledged)",
                                exc, len(wave))
                    return False
            await asyncio.sleep(0)
        return True

    async def _set_aside_refused(self, spool: Slot, chunk: list[Entry], records: list[list[Record]],
                                 wave: list[int]) -> bool:
        """Kafka refused some records for good: publish the wave's entries one by one and set aside
        those it refuses, so one oversized push cannot hold up every push behind it. False if
        something else failed meanwhile."""
        for i in wave:
            try:
                await self._publisher.publish_batch(records[i], DRAIN_PUBLISH_TIMEOUT_S)
            except PublishError as exc:
                if not exc.refused_records:
                    return False
                kept = await spool.set_aside(chunk[i], "refused")
                self._metrics.spool_refused.inc()
                log.error("a spooled push (%d records) that Kafka refuses (%s) is kept in %s instead",
                          len(records[i]), exc, kept)
        return True

    async def _decode(self, spool: Slot, entry: Entry) -> list[Record]:
        try:
            return decode(entry.payload)
        except (ValueError, TypeError, msgpack.exceptions.UnpackException) as exc:  # intact frame, foreign payload
            kept = await spool.set_aside(entry, "corrupt")
            log.error("spool entry in segment %d at offset %d cannot be decoded (%s); it is left out and kept in %s",
                      entry.segment, entry.offset, exc, kept)
            return []

