"""Where an accepted push's records go: straight to Kafka, or into the spool and later to Kafka.

`Delivery.keep(records)` returns once the records are durable: acknowledged by Kafka, or fsync'd
in the spool. The rule that keeps each agent's events in order is simple: while the spool holds
anything (or is writing), every push goes through it, and the drainer publishes its entries in
the order they were accepted. A push goes straight to Kafka only when the spool is idle and Kafka
is healthy; if Kafka then fails or does not acknowledge within BRIDGE_PUBLISH_TIMEOUT_S, the push
is spooled instead (records Kafka may still have taken reappear later with the same ce_id).

The drainer (bridge/drainer.py) delivers the spool's entries, in order.

Across replicas sharing a spool root the spool decides (bridge/spool/neighbours.py): "idle" also
means no hold and nothing owed to another slot, the drainer stops at a hold's cut, and the slots
left behind by replicas that are gone, which the replica's own slot claims about twice a second,
are delivered here the same way and then released. On SIGTERM the spool is delivered for up to
BRIDGE_EXIT_DRAIN_TIMEOUT_S while Kafka is usable, before the exit.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

from .drainer import Drainer, encode
from .metrics import Metrics
from .outage import Outage
from .publisher import PublishError
from .records import Record
from .spool import AdoptedSlot, OwnSlot, Slot, SpoolError

log = logging.getLogger("bridge.delivery")
ADOPT_EVERY_S = 0.5


class Kafka(Protocol):
    """What delivery needs of the publisher (bridge/publisher.py)."""

    @property
    def ready(self) -> bool: ...

    @property
    def problem(self) -> str: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def publish(self, records: list[Record], timeout: float | None = None) -> None: ...

    async def publish_batch(self, records: list[Record], timeout: float | None = None) -> None: ...


class Unavailable(Exception):
    """Neither Kafka nor the spool can keep the push now; the message says why."""


class Delivery:
    def __init__(self, publisher: Kafka, spool: OwnSlot | None, metrics: Metrics, spool_problem: str = "") -> None:
        self._publisher = publisher
        self._spool = spool
        self._spool_problem = spool_problem
        self._metrics = metrics
        self._outage = Outage(spooled_before_start=spool is not None and spool.entries > 0)
        self._drainer = Drainer(publisher, metrics, self._outage)
        self._draining: asyncio.Task[None] | None = None
        self._adopting: asyncio.Task[None] | None = None
        self._adopted: dict[AdoptedSlot, asyncio.Task[None]] = {}
        metrics.watch_spool(spool, lambda: self.adopted)

    @property
    def spool(self) -> OwnSlot | None:
        return self._spool

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
                info["spool"]["adopted"] = {s.name: {"entries": s.entries, **s.order()} for s in self._adopted}
        return info

    @property
    def adopted(self) -> list[AdoptedSlot]:
        """Slots left behind by replicas that are gone, being delivered by this one."""
        return list(self._adopted)

    async def start(self) -> None:
        await self._publisher.start()
        if self._spool is not None:
            self._draining = asyncio.create_task(self._drainer.run(self._spool), name="spool-drainer")
            self._adopting = asyncio.create_task(self._adopt_forever(self._spool), name="spool-adoption")

    async def deliver(self, spool: Slot, deadline: float | None = None) -> bool:
        """Drain `spool` until it is empty (True), or until `deadline` (monotonic) passes (False)."""
        return await self._drainer.deliver(spool, deadline)

    async def drain_before_exit(self, timeout: float) -> None:
        """On SIGTERM, once no push is in flight: deliver what is spooled (this replica's and the
        slots it adopted) while Kafka is usable, for up to `timeout` seconds. What is left stays on
        disk: for the next start, a replica sharing the volume, or `cc-bridge drain`."""
        spools: list[Slot] = [s for s in [self._spool, *self._adopted] if s is not None and s.entries]
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
        """Stop draining and adopting (what is left stays on disk for the next start), then flush Kafka."""
        tasks = [t for t in [self._adopting, self._draining, *self._adopted.values()] if t is not None]
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
        if await spool.vet_direct():
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
        self._outage.spooled(reason, spool.directory)
        self._drainer.wake()
        return True

    # -- slots left behind ------------------------------------------------------------------------

    async def _adopt_forever(self, spool: OwnSlot) -> None:
        """About twice a second, claim the slots that replicas which are gone left behind with
        pushes in them, and deliver each until it is empty, then release it."""
        problem = ""
        while True:
            await asyncio.sleep(ADOPT_EVERY_S)
            try:
                found = await spool.adopt_left_behind({s.name for s in self._adopted})
                problem = ""
            except OSError as exc:
                if str(exc) != problem:
                    problem = str(exc)
                    log.error("looking for spool slots left behind under %s failed: %s; trying again",
                              spool.directory.parent, exc)
                continue
            for slot in found:
                log.warning("delivering spool slot %s left behind by a replica that is gone (%d pushes)",
                            slot.directory, slot.entries)
                self._adopted[slot] = asyncio.create_task(self._deliver_adopted(slot), name=f"adopted-{slot.name}")

    async def _deliver_adopted(self, slot: AdoptedSlot) -> None:
        try:
            await self._drainer.deliver(slot)
            log.warning("spool slot %s left behind is delivered; released", slot.directory)
        finally:
            await slot.close()
            self._adopted.pop(slot, None)
