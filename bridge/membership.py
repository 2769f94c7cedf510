"""Whether this replica is in the router's ring: decided here, and told to the other replicas
sharing its spool volume before the router can hear it.

The router learns a replica's verdict from its health check of `/readyz`. Replicas that share a
spool volume keep moved agents in order only if a replica that stops taking pushes says so in its
slot (where its spool ends) before the router moves its agents, and if one that starts again
begins its join window when the router may start sending. So the check itself is the seam: each
probe applies the verdict to the spool (join or leave) and only then is answered. Shutting down
leaves once, for good, before the push port closes.
"""
from __future__ import annotations

from .delivery import Delivery


class Membership:
    def __init__(self, delivery: Delivery) -> None:
        self._delivery = delivery
        self._departed = False

    @property
    def departed(self) -> bool:
        """The replica is shutting down: it left and does not join again."""
        return self._departed

    async def start(self) -> None:
        """Take pushes from the start (the router sends them once its checks see the replica ready)."""
        await self._apply(self._delivery.ready)

    async def answer_probe(self) -> bool:
        """A health check asks whether this replica takes pushes: apply the verdict, then return it."""
        ready = self._delivery.ready and not self._departed
        await self._apply(ready)
        return ready

    async def depart(self) -> None:
        """Leave for good (SIGTERM), before the push port closes."""
        self._departed = True
        await self._apply(False)

    async def _apply(self, ready: bool) -> None:
        spool = self._delivery.spool
        if spool is not None and ready != spool.serving:
            await (spool.join() if ready else spool.leave())
