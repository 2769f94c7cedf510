"""What the container tests share: the gateway (bench.simulate's Simulator) aimed at the project's
router, polling, the faults they inject (Kafka stopped and started, a replica killed and started),
the bridges' spools, and reading every record back to compare with a ledger."""
from __future__ import annotations

import asyncio
from typing import Any

from bench.simulate import Ledger, SimSettings, Simulator
from bench.verify import Figures, compare, read_topics
from tests.support import until

from .stack import Stack

TOPIC = "cc.agent.events"
OK_PUSHES = 'bridge_pushes_total{retcode="0"}'


def gateway(stack: Stack, ledger: Ledger, **overrides: Any) -> Simulator:
    """A gateway pushing through the router. The defaults are the short form (1 s retries); the
    scenarios pass the gateway's real timings (10 s retries, sign-out after 120 s of failures)."""
    settings = {"url": stack.push_url, "agents": 16, "duration_s": 180.0, "cafile": str(stack.tls / "ca.pem"),
                "token": stack.token, "retry_interval_s": 1.0, "timeout_s": 10.0, "signout_after_s": 90.0,
                "think_s": (0.2, 0.8), "drain_s": 40.0}
    settings.update(overrides)
    return Simulator(SimSettings(**settings), ledger)


# -- faults --------------------------------------------------------------------------------------

async def kafka_down(stack: Stack) -> None:
    await asyncio.to_thread(stack.engine.podman, "stop", "--time", "20", stack.container("kafka"))


async def kafka_up(stack: Stack) -> None:
    stopped = stack.containers("kafka", every=True)
    assert len(stopped) == 1, stopped
    await asyncio.to_thread(stack.engine.podman, "start", stopped[0])


async def kill(stack: Stack, victim: str) -> None:
    """SIGKILL: podman does not apply the restart policy to a container it was told to kill, so
    the victim stays down until `start_again`."""
    await asyncio.to_thread(stack.engine.podman, "kill", "--signal", "KILL", victim)
    state = (await asyncio.to_thread(stack.engine.inspect, victim))["State"]
    assert not state["Running"] and state["ExitCode"] == 137, f"{victim} after SIGKILL: {state}"


async def stop_gracefully(stack: Stack, victim: str) -> None:
    """What `docker compose stop` does: SIGTERM, and the compose file's stop grace period."""
    await asyncio.to_thread(stack.engine.podman, "stop", "--time", "95", victim)


async def freeze(stack: Stack, victim: str) -> None:
    await asyncio.to_thread(stack.engine.podman, "kill", "--signal", "STOP", victim)


async def thaw(stack: Stack, victim: str) -> None:
    await asyncio.to_thread(stack.engine.podman, "kill", "--signal", "CONT", victim)


async def routed(stack: Stack, victim: str, timeout: float = 90) -> None:
    """Until `victim` answers /readyz 200 and the router has taken it back (its server UP)."""
    await until(lambda: stack.management(victim, "/readyz")[0] == 200
                and stack.router_states().get(stack.server_of(victim)) == "UP", timeout, f"{victim} back in use")


async def start_again(stack: Stack, victim: str, timeout: float = 90) -> None:
    await asyncio.to_thread(stack.engine.podman, "start", victim)
    await until(lambda: stack.management(victim, "/readyz")[0] == 200, timeout, f"{victim} ready again")


# -- spools ---------------------------------------------------------------------------------------

def spooled(stack: Stack) -> dict[str, float]:
    """Per running replica: pushes in its own spool slot."""
    return {b: stack.metrics(b).get("bridge_spool_entries", 0.0) for b in stack.containers("bridge")}


def undelivered(stack: Stack) -> dict[str, float]:
    """Per running replica: pushes its spool still holds (its own slot and the slots it adopted)
    plus the slots nobody serves that it can see (each counts as one)."""
    found = {}
    for bridge in stack.containers("bridge"):
        m = stack.metrics(bridge)
        found[bridge] = (m.get("bridge_spool_entries", 1.0) + m.get("bridge_spool_adopted_entries", 0.0)
                         + m.get("bridge_spool_orphaned_slots", 0.0))
    return found


async def spools_delivered(stack: Stack, timeout: float = 120) -> None:
    await until(lambda: not any(undelivered(stack).values()), timeout,
                "every spool of the shared volume delivered to Kafka")


async def read_back(stack: Stack, ledger: Ledger) -> Figures:
    """Every record of the topic, partition by partition in offset order, against the ledger."""
    return compare(ledger, await read_topics(stack.kafka_options(), [TOPIC], 180))
