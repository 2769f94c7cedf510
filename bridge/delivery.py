"""Where an accepted push's records go: straight to Kafka, or into the spool and later to Kafka.

`Delivery.keep(records)` returns once the records are durable: acknowledged by Kafka, or fsync'd
in the spool. The rule that keeps each agent's events in order is simple: while the spool holds
anything (or is writing), every push goes through it, and the drainer publishes its entries in
the order they were accepted. A push goes straight to Kafka only when the spool is idle and Kafka
is healthy; if Kafka then fails or does not acknowledge within BRIDGE_PUBLISH_TIMEOUT_S, the push
is spooled instead (records Kafka may still have taken reappear later with the same ce_id).

The drainer publishes a segment's entries in waves: an entry joins a wave unless an earlier entry
of the same agent is not yet acknowledged, so entries of one agent are never in flight together
and a failure can never let a later one of them overtake an earlier one.

Across replicas sharing a spool root the spool decides (bridge/spool/neighbours.py): "idle" also
means no hold and nothing owed to another slot, the drainer stops at a hold's cut, and slots left
behind by replicas that are gone are handed here to be delivered the same way. On SIGTERM the
spool is delivered for up to BRIDGE_EXIT_DRAIN_TIMEOUT_S while Kafka is usable, before the exit.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import msgpack

from .metrics import Metrics
from .publisher import Publisher, PublishError
from .records import Record
from .spool import Entry, Spool, SpoolError

log = logging.getLogger("bridge.delivery")
SPOOLED_HEADER = ("bridge_spooled", b"true")
DRAIN_CHUNK = 200           # entries decoded, published and acknowledged to the spool together
DRAIN_RETRY_S = 1.0
HOLD_POLL_S = 0.05          # how often a held spool looks whether the slots it waits for delivered
DRAIN_PUBLISH_TIMEOUT_S = 30.0  # nobody waits on a drained entry: give Kafka the producer's own timeout


class Unavailable(Exception):
    """Neither Kafka nor the spool can keep the push now; the message says why."""


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


class Delivery:
    def __init__(self, publisher: Publisher, spool: Spool | None, metrics: Metrics, spool_problem: str = "") -> None:
        self._publisher = publisher
        self._spool = spool
        self._spool_problem = spool_problem
        self._metrics = metrics
        self._drainer: asyncio.Task[None] | None = None
        self._adopted: dict[Spool, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._outage_started: float | None = None
        self._outage_spooled = 0
        metrics.watch_spool(spool, lambda: self.adopted)
        if spool is not None and spool.entries:
            self._outage_started = time.monotonic()

    @property
    def mode(self) -> str:
        """direct: pushes go to Kafka; spooling: to the spool, Kafka not usable; draining: to the
        spool while the drainer empties it; unavailable: nowhere."""
        spool = self._spool
        if spool is None or spool.idle:
            if self._publisher.ready:
                return "direct"
            return "spooling" if spool is not None and spool.accepting else "unavailable"
        if not spool.accepting:
            return "unavailable"
        return "draining" if self._publisher.ready else "spooling"

    @property
    def ready(self) -> bool:
        return self.mode != "unavailable"

    def describe(self) -> dict[str, Any]:
        spool = self._spool
        kafka = "usable" if self._publisher.ready else self._publisher.problem
        info: dict[str, Any] = {"mode": self.mode, "kafka": kafka}
        if self._spool_problem:
            info["spool"] = {"problem": self._spool_problem}
        if spool is not None:
            info["spool"] = {"entries": spool.entries, "bytes": spool.bytes, "max_bytes": spool.max_bytes,
                             "accepting": spool.accepting, "directory": str(spool.directory), **spool.order()}
            if spool.refusal:
                info["spool"]["problem"] = spool.refusal
            if self._adopted:
                info["spool"]["adopted"] = {s.directory.name: {"entries": s.entries, **s.order()}
                                            for s in self._adopted}
        return info

    @property
    def adopted(self) -> list[Spool]:
        """Slots left behind by replicas that are gone, being delivered by this one."""
        return list(self._adopted)

    async def start(self) -> None:
        if self._spool is not None:
            await self._spool.join()
        await self._publisher.start()
        if self._spool is not None:
            self._drainer = asyncio.create_task(self._drain(self._spool), name="spool-drainer")
            self._spool.watch(self.deliver_adopted)

    async def serve(self, ready: bool) -> None:
        """Tell the spool whether this replica takes pushes, before the router hears of it: it leaves
        when not ready (or shutting down) and joins again when ready."""
        if self._spool is not None and ready != self._spool.serving:
            await (self._spool.join() if ready else self._spool.leave())

    async def deliver_adopted(self, spool: Spool) -> None:
        """Deliver a slot left behind by a replica that is gone, then release it."""
        log.warning("delivering spool slot %s left behind by a replica that is gone (%d pushes)",
                    spool.directory, spool.entries)
        self._adopted[spool] = asyncio.create_task(self._deliver_and_release(spool), name=f"adopted-{spool.directory.name}")

    async def _deliver_and_release(self, spool: Spool) -> None:
        try:
            await self.deliver(spool)
            log.warning("spool slot %s left behind is delivered; released", spool.directory)
        finally:
            await spool.close()
            self._adopted.pop(spool, None)

    async def deliver(self, spool: Spool, deadline: float | None = None) -> bool:
        """Drain `spool` until it is empty (True), or until `deadline` (monotonic) passes (False)."""
        failing = ""
        while spool.entries and (deadline is None or time.monotonic() < deadline):
            failing = await self._drain_step(spool, deadline, failing)
        return spool.entries == 0

    async def drain_before_exit(self, timeout: float) -> None:
        """On SIGTERM, once no push is in flight: deliver what is spooled (this replica's and the
        slots it adopted) while Kafka is usable, for up to `timeout` seconds. What is left stays on
        disk: for the next start, a replica sharing the volume, or `cc-bridge drain`."""
        spools = [s for s in [self._spool, *self._adopted] if s is not None and s.entries]
        if not spools or timeout <= 0:
            return
        deadline = time.monotonic() + timeout
        log.warning("leaving: delivering %d spooled pushes before exiting (at most %g s, while Kafka is usable)",
                    sum(s.entries for s in spools), timeout)
        while time.monotonic() < deadline and any(s.entries for s in spools) and self._publisher.ready:  # noqa: ASYNC110
            await asyncio.sleep(0.1)  # the drainers do the work; this only watches
        left = [s for s in spools if s.entries]
        if not left:
            log.warning("leaving: every spooled push is delivered")
            return
        why = "Kafka is not usable" if not self._publisher.ready else f"{timeout:g} s passed"
        log.error("leaving with %d pushes still spooled in %s (%s); they are delivered by the next start, a replica "
                  "sharing the volume, or `cc-bridge drain`", sum(s.entries for s in left),
                  ", ".join(str(s.directory) for s in left), why)

    async def stop(self) -> None:
        """Stop draining (what is left stays on disk for the next start), then flush Kafka."""
        tasks = [t for t in [self._drainer, *self._adopted.values()] if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            await self._publisher.stop()
        finally:
            if self._spool is not None:
                await self._spool.close()

    # -- keeping a push ---------------------------------------------------------------------------

    async def keep(self, records: list[Record]) -> bool:
        """Return once `records` are durable; True if they went to the spool. Raise Unavailable."""
        spool = self._spool
        if spool is None:
            try:
                await self._publisher.publish(records)
            except PublishError as exc:
                problem = f", and the spool is unavailable: {self._spool_problem}" if self._spool_problem else ""
                raise Unavailable(f"{exc}{problem}") from None
            return False
        reason = "the spool is still being delivered"
        if await spool.bypass():
            if self._publisher.ready:
                try:
                    await self._publisher.publish(records)
                    return False
                except PublishError as exc:
                    reason = str(exc)
            else:
                reason = self._publisher.problem
        try:
            await spool.append(encode(records))
        except SpoolError as exc:
            self._metrics.spool_errors.inc()
            raise Unavailable(f"{reason}, and {exc}") from None
        self._metrics.spooled.inc()
        if self._outage_started is None:
            self._outage_started = time.monotonic()
            log.warning("outage mode: %s; pushes are kept in the spool %s and delivered later",
                        reason, spool.directory)
        self._outage_spooled += 1
        self._wake.set()
        return True

    # -- draining -----------------------------------------------------------------------------------

    async def _drain(self, spool: Spool) -> None:
        """Deliver the spool's entries for as long as the process runs. A disk error while reading or
        acknowledging is counted and tried again (entries published but not acknowledged to the
        spool are published again later, with the same ce_id); it never stops the drainer."""
        failing = ""
        while True:
            failing = await self._drain_step(spool, None, failing)

    async def _drain_step(self, spool: Spool, deadline: float | None, failing: str) -> str:
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

    async def _drain_some(self, spool: Spool, deadline: float | None = None) -> None:
        if not spool.deliverable or not self._publisher.ready:
            if spool is self._spool:
                self._end_outage_if_done(spool)
            if spool.entries and await spool.settle():
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

    async def _publish_chunk(self, spool: Spool, chunk: list[Entry]) -> bool:
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

    async def _set_aside_refused(self, spool: Spool, chunk: list[Entry], records: list[list[Record]],
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

    async def _decode(self, spool: Spool, entry: Entry) -> list[Record]:
        try:
            return decode(entry.payload)
        except (ValueError, TypeError, msgpack.exceptions.UnpackException) as exc:  # intact frame, foreign payload
            kept = await spool.set_aside(entry, "corrupt")
            log.error("spool entry in segment %d at offset %d cannot be decoded (%s); it is left out and kept in %s",
                      entry.segment, entry.offset, exc, kept)
            return []

    def _end_outage_if_done(self, spool: Spool) -> None:
        if self._outage_started is not None and spool.idle:
            log.warning("outage mode ended: %d pushes went through the spool in %.1f s and are all in Kafka",
                        self._outage_spooled, time.monotonic() - self._outage_started)
            self._outage_started, self._outage_spooled = None, 0
