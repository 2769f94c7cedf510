"""The replica-loss drills of bench.faults: several bridges behind an agent-affine router, Kafka down,
one replica killed while its spool holds pushes, Kafka back, the replica back later.

    replica-loss           the replicas share one spool directory, a slot each (docker compose): the
                           survivors adopt the killed replica's slot and hold back its agents' newer
                           pushes until the older ones are delivered. Passes with 0 lost, 0 out of
                           order, nobody signed out.
    replica-loss-separate  a spool directory each (Kubernetes: a volume per pod): the killed
                           replica's spool waits until it comes back, and its agents' newer pushes,
                           spooled by the others meanwhile, may reach Kafka first. Passes with 0
                           lost and nobody signed out; the figures say how many agents and events
                           came out of order.

The router is a stand-in for the one deployed (consistent hashing on workNo): rendezvous hashing
over the live replicas, so only a departed replica's agents move, and they move back when it
returns. It takes a replica out the moment the drill kills it and back once it is ready again,
which is harsher than health checks: the moved agents' next pushes arrive at once.
"""
from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.support import BridgeProcess, Broker

SHARED, SEPARATE = "replica-loss", "replica-loss-separate"
SCENARIOS = (SHARED, SEPARATE)


@dataclass
class AgentRouter:
    bridges: list[BridgeProcess]
    down: set[int] = field(default_factory=set)

    def url(self, agent: str) -> str:
        live = [n for n in range(len(self.bridges)) if n not in self.down]
        chosen = max(live, key=lambda n: hashlib.blake2b(f"{agent}/{n}".encode(), digest_size=8).digest())
        return self.bridges[chosen].url


def spool_dirs(scenario: str, base: str, replicas: int) -> list[str]:
    return [base if scenario == SHARED else f"{base}-{n}" for n in range(replicas)]


async def inject(kafka: Broker, router: AgentRouter, outage_s: float, return_after_s: float,
                 log: Callable[[str], None]) -> None:
    """Kafka down; a third into the outage kill replica 0 (its spool holds pushes by then); Kafka
    back after `outage_s`; replica 0 back `return_after_s` later."""
    run = asyncio.to_thread
    victim = router.bridges[0]
    await run(kafka.kill)
    await asyncio.sleep(outage_s / 3)
    spooled = (await run(victim.readiness)).get("spool", {}).get("entries", 0)
    await run(victim.kill)
    router.down.add(0)
    log(f"replica 0 killed with {spooled} pushes in its spool; its agents go to the others")
    await asyncio.sleep(outage_s * 2 / 3)
    await run(kafka.start)
    log(f"Kafka back; replica 0 returns in {return_after_s:g} s")
    await asyncio.sleep(return_after_s)
    await run(victim.start)
    router.down.discard(0)
    log("replica 0 back and ready; its agents return to it")
