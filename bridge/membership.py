"""Whether this replica is in the router's ring: decided here, told to the other replicas sharing
its spool volume first, and only then to the router.

The router learns a replica's verdict from its health checks of `/readyz`. Replicas that share a
spool volume keep moved agents in order only if a replica that stops taking pushes writes in its
slot where its spool ends before the router moves its agents, and if one that starts again begins
its join window when the router may start sending (bridge/spool/neighbours.py). So a task decides
every TICK_S and applies each change to the spool (join, or a bounded leave) before `/readyz`
answers with it; `/readyz` itself only reads the verdict, awaiting nothing, so a busy push loop
delays its answer by no more than a turn of the loop.

The verdict is "out" while pushes cannot be kept (Kafka unusable and the spool not accepting), and
while the router has stopped checking this replica: once health checks that name a router (header
`x-cc-router`) have come, a silence of BRIDGE_ROUTER_PROBE_LOSS_S means the router cannot reach it
or took it out (a partition, a hung loop), and the replica leaves by itself. It joins again, through
its join window, when the checks come back.

Leaving on purpose (SIGTERM) is `depart`: the replica leaves the spool, `/readyz` answers 404 (the
router's `http-check disable-on-404` stops sending it new pushes at the next check), the push port
keeps serving for BRIDGE_LEAVE_GRACE_S, answering with `Connection: close`, and only then closes.

With a spool volume of its own (Kubernetes), moving agents away from a replica whose spool still
holds pushes would let their newer pushes overtake the older ones. There BRIDGE_LEAVE_SPOOL_WAIT_S
makes a departing replica first serve on as usual while its spool is delivered; if that does not
happen in time (Kafka still away), it closes without telling the router, which keeps its agents
for it (failing their pushes) until it is back with the same volume.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from .delivery import Delivery

log = logging.getLogger("bridge")
TICK_S = 0.25
ROUTER_HEADER = "x-cc-router"  # the shipped routers' health checks carry it
APPLY_TIMEOUT_S = 5.0  # a join that takes longer (a stalled volume) counts as failed, and is tried again


@dataclass(frozen=True)
class Verdict:
    status: int   # what /readyz answers: 200 in, 503 out, 404 leaving for good
    reason: str   # why not in ("" when in)

    @property
    def ready(self) -> bool:
        return self.status == 200


IN = Verdict(200, "")


class Membership:
    def __init__(self, delivery: Delivery, grace_s: float = 5.0, probe_loss_s: float = 0.0,
                 clock: Callable[[], float] = time.monotonic, spool_wait_s: float = 0.0) -> None:
        self._delivery = delivery
        self._grace_s = grace_s
        self._spool_wait_s = spool_wait_s
        self._probe_loss_s = probe_loss_s
        self._clock = clock
        self._verdict = Verdict(503, "starting")
        self._leaving = False
        self._router_checked: float | None = None  # when a router's health check last came
        self._task: asyncio.Task[None] | None = None
        self._turn = asyncio.Lock()
        self._asked = asyncio.Event()  # a health check came: decide now rather than at the next tick

    @property
    def verdict(self) -> Verdict:
        return self._verdict

    @property
    def leaving(self) -> bool:
        """The replica is shutting down: it left and does not join again."""
        return self._leaving

    def probed(self, by_router: bool) -> Verdict:
        """A health check came (`by_router`: it names a router); the verdict to answer with."""
        if by_router:
            self._router_checked = self._clock()
        self._asked.set()
        return self._verdict

    async def start(self) -> None:
        """Decide once now (join if pushes can be kept), then every TICK_S."""
        await self._decide()
        self._task = asyncio.create_task(self._watch(), name="membership")

    async def depart(self) -> None:
        """Leave for good (SIGTERM): out of the spool first, then 404 for the router, then the
        grace during which pushes still come while the router stops sending them (see the module's
        description for a spool that must be delivered first)."""
        announce = await self._spool_delivered()
        async with self._turn:
            self._leaving = True
            await self._leave()
            self._verdict = (Verdict(404, "leaving: shutting down") if announce else
                             Verdict(503, "shutting down; its agents stay with it (its spool holds their pushes)"))
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if announce and self._grace_s > 0:
            log.warning("leaving: the router is told (/readyz 404); pushes are still served for %g s", self._grace_s)
            await asyncio.sleep(self._grace_s)

    async def _spool_delivered(self) -> bool:
        """Whether to tell the router: at once without BRIDGE_LEAVE_SPOOL_WAIT_S; with it, once the
        spool holds nothing (waiting for that at most that long, serving as usual)."""
        spool = self._delivery.spool
        if self._spool_wait_s <= 0 or spool is None or spool.idle:
            return True
        log.warning("leaving once the %d pushes in the spool are delivered (at most %g s; pushes are served as usual "
                    "meanwhile)", spool.entries, self._spool_wait_s)
        deadline = self._clock() + self._spool_wait_s
        while not spool.idle and self._clock() < deadline:  # noqa: ASYNC110 (the drainer delivers; this watches)
            await asyncio.sleep(TICK_S)
        if spool.idle:
            return True
        log.error("leaving with %d pushes in the spool (Kafka: %s): the router is not told, so it keeps this replica's "
                  "agents for it until it is back with the same volume", spool.entries,
                  self._delivery.describe()["kafka"])
        return False

    async def _watch(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._asked.wait(), TICK_S)
            self._asked.clear()
            try:
                await self._decide()
            except Exception:  # never let the decision stop: log, and decide again at the next tick
                log.exception("deciding whether this replica takes pushes failed")

    async def _decide(self) -> None:
        async with self._turn:
            if self._leaving:
                return
            wanted = self._wanted()
            spool = self._delivery.spool
            if not wanted.ready:
                if spool is not None and spool.serving:
                    await self._leave()
            elif spool is not None and not spool.serving:
                try:
                    await asyncio.wait_for(spool.join(), APPLY_TIMEOUT_S)
                except (OSError, TimeoutError) as exc:
                    wanted = Verdict(503, f"joining the other replicas failed ({exc or 'the spool volume stalled'})")
            if wanted != self._verdict:
                log.log(logging.INFO if wanted.ready else logging.WARNING, "this replica %s",
                        "takes pushes" if wanted.ready else f"takes no pushes: {wanted.reason}")
            self._verdict = wanted

    def _wanted(self) -> Verdict:
        delivery = self._delivery
        if not delivery.ready:
            spool = delivery.spool
            why = f"; the spool: {spool.refusal}" if spool is not None and spool.refusal else ""
            return Verdict(503, f"pushes cannot be kept: Kafka is not usable and there is no spool accepting them{why}")
        checked = self._router_checked
        if self._probe_loss_s and checked is not None and self._clock() - checked > self._probe_loss_s:
            return Verdict(503, f"the router has not checked this replica for {self._clock() - checked:.0f} s")
        return IN

    async def _leave(self) -> None:
        spool = self._delivery.spool
        if spool is not None and spool.serving:
            await spool.leave()
