"""Scale-out under the gateway's real timings: 200 agents, each pushing one request at a time,
retrying a failed push every 10 s and signed out after 120 s of failures, through the router to
three replicas sharing one spool volume. Each scenario runs its own agents, then waits until
every spool is delivered and reads the whole topic back in offset order:

a. Kafka down for 60 s;
b. one replica killed (SIGKILL) under load, started again 30 s later;
c. planned operations with Kafka up: a rolling restart of every replica (SIGTERM as `docker
   compose stop` sends it, started again, 20 s each), then 3 -> 4 -> 3 (compose's --scale: the
   fourth replica joins, then is stopped with SIGTERM and removed): no push may fail;
d. Kafka down, a replica killed while its spool holds pushes, Kafka back, the replica back 30 s
   after its death;
e. the same rolling restart during a Kafka outage: no agent may keep failing for over 30 s;
f. a replica frozen (SIGSTOP) for 30 s, then running again.

The agents share a pool of SCENARIO_CONNECTIONS connections (8), as the gateway's pooled client
does. Each scenario must end with nothing lost, no agent signed out and no agent with an event out
of offset order (repeated ce_id values dropped first). Larger and longer forms of the same
scenarios: SCENARIO_AGENTS and SCENARIO_OUTAGE_S in the environment (200 and 60 by default), for
example `SCENARIO_AGENTS=1000 SCENARIO_OUTAGE_S=180 make container-test`; d without containers,
with more replicas: `python -m bench.faults --scenarios replica-loss`.
"""
from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable

import pytest

from bench.simulate import Ledger
from tests.support import ROUTER_LINE

from .engine import HealthDriver
from .gateway import (
    OK_PUSHES,
    freeze,
    gateway,
    kafka_down,
    kafka_up,
    kill,
    read_back,
    routed,
    spooled,
    spools_delivered,
    start_again,
    stop_gracefully,
    thaw,
    until,
)
from .stack import REPLICAS, Stack

pytestmark = pytest.mark.container

AGENTS = int(os.environ.get("SCENARIO_AGENTS", "200"))
OUTAGE_S = float(os.environ.get("SCENARIO_OUTAGE_S", "60"))
CONNECTIONS = int(os.environ.get("SCENARIO_CONNECTIONS", "8"))
REAL_TIMINGS = {"agents": AGENTS, "retry_interval_s": 10.0, "signout_after_s": 120.0, "timeout_s": 8.0,
                "think_s": (0.5, 2.5), "drain_s": 60.0, "duration_s": 900.0, "connections": CONNECTIONS}
ROLLING_PAUSE_S = 20.0    # a rolling restart waits this long after each replica is back
WARM_PUSHES = 2 * AGENTS  # every agent has pushed before the fault begins
AFTER_S = 15.0            # the load goes on this long once the fault is over

Fault = Callable[[Stack, Ledger], Awaitable[None]]


async def scenario(stack: Stack, tmp_path, name: str, first_work_no: int, fault: Fault, *, no_failures: bool = False,
                   longest_failure_s: float = 120.0) -> None:
    await stack_settled(stack)
    started = time.monotonic()
    ledger = Ledger(tmp_path / f"{name}.jsonl")
    sim = gateway(stack, ledger, first_work_no=first_work_no, **REAL_TIMINGS)
    summary = await sim.around(lambda: fault(stack, ledger), lambda: sim.pushes_acked >= WARM_PUSHES, 90,
                               f"{WARM_PUSHES} pushes answered", AFTER_S)
    await stack_settled(stack)
    await spools_delivered(stack)
    figures = await read_back(stack, ledger)
    print(f"\n{name}: {summary.line()}\n{name}: {figures.line()}\n{name}: took {time.monotonic() - started:.0f}s",
          flush=True)
    for at, text in await asyncio.to_thread(router_failures, stack, ledger.entries[0]["t"]):
        print(f"{name}: router {at:.1f} {text}", flush=True)
    assert summary.agents == AGENTS and summary.pushes_acked > WARM_PUSHES, summary.line()
    assert summary.signed_out == summary.abandoned == summary.events_unsent == 0, summary.line()
    assert not (no_failures and summary.failures), f"pushes failed: {summary.line()}"
    assert summary.longest_failing_s <= longest_failure_s, summary.line()
    assert figures.lost == 0 and figures.events_found == figures.events_acked, figures.details()
    assert figures.order_violations == 0 and figures.agents_out_of_order == 0, figures.details()


async def stack_settled(stack: Stack) -> None:
    """REPLICAS replicas running, ready and in the router's use (the next scenario starts from there)."""
    await asyncio.to_thread(stack.wait_ready, REPLICAS, 120)


def router_failures(stack: Stack, since: float, most: int = 8) -> list[tuple[float, str]]:
    """The router's log lines since `since` about pushes it did not answer 200 (the first `most`)
    and the replicas' state changes, for the output when a scenario fails."""
    found = [(at, text) for at, text in stack.router_log() if at >= since and
             ("is DOWN" in text or "is UP" in text or ((m := ROUTER_LINE.match(text)) and m["status"] != "200"))]
    return found[:most]


def scale(stack: Stack, replicas: int) -> None:
    """compose's own scaling of the bridge service, leaving the other replicas as they are."""
    with HealthDriver(stack.engine, stack.project):
        stack.engine.compose(stack.project, "up", "--detach", "--no-build", "--no-recreate", "--no-deps",
                             "--timeout", "95", "--scale", f"bridge={replicas}", "bridge", timeout=300)


# -- the faults ----------------------------------------------------------------------------------

async def outage(stack: Stack, ledger: Ledger) -> None:
    await kafka_down(stack)
    await asyncio.sleep(OUTAGE_S)
    entries = await asyncio.to_thread(spooled, stack)
    assert sum(entries.values()) > 0, f"Kafka has been down for {OUTAGE_S:g} s and no replica spooled: {entries}"
    await kafka_up(stack)


async def kill_and_return(stack: Stack, ledger: Ledger) -> None:
    victim = stack.containers("bridge")[1]
    killed = time.monotonic()
    await kill(stack, victim)
    await asyncio.sleep(30 - (time.monotonic() - killed))
    await start_again(stack, victim)


async def rescale(stack: Stack, ledger: Ledger) -> None:
    before = set(stack.containers("bridge"))
    await asyncio.to_thread(scale, stack, REPLICAS + 1)
    await asyncio.to_thread(stack.wait_ready, REPLICAS + 1, 120)
    joined = set(stack.containers("bridge")) - before
    assert len(joined) == 1, f"scaling to {REPLICAS + 1} started {joined}"
    newcomer = joined.pop()
    await until(lambda: stack.metrics(newcomer).get(OK_PUSHES, 0.0) > 0, 60, f"pushes answered by {newcomer}")
    await asyncio.sleep(15)
    await asyncio.to_thread(scale, stack, REPLICAS)
    assert len(stack.containers("bridge")) == REPLICAS


async def rolling_restart(stack: Stack, ledger: Ledger) -> None:
    """Every replica in turn: stopped as compose stops it (SIGTERM), started again, in use again,
    then ROLLING_PAUSE_S before the next."""
    for victim in stack.containers("bridge"):
        await stop_gracefully(stack, victim)
        await start_again(stack, victim)
        await routed(stack, victim)
        await asyncio.sleep(ROLLING_PAUSE_S)


async def planned_operations(stack: Stack, ledger: Ledger) -> None:
    await rolling_restart(stack, ledger)
    ledger.mark("rescale")
    await rescale(stack, ledger)


async def rolling_restart_in_an_outage(stack: Stack, ledger: Ledger) -> None:
    await kafka_down(stack)
    await until(lambda: sum(spooled(stack).values()) >= 100, 60, "100 pushes spooled")
    await rolling_restart(stack, ledger)
    await kafka_up(stack)


async def frozen_for_30s(stack: Stack, ledger: Ledger) -> None:
    victim = stack.containers("bridge")[0]
    await freeze(stack, victim)
    await asyncio.sleep(30)
    await thaw(stack, victim)
    await routed(stack, victim)


async def outage_and_loss(stack: Stack, ledger: Ledger) -> None:
    await kafka_down(stack)

    def holder() -> str | None:
        entries = spooled(stack)
        busiest = max(entries, key=lambda b: entries[b])
        return busiest if entries[busiest] >= 100 else None

    victim = await until(holder, 60, "a replica holding 100 spooled pushes")
    killed = time.monotonic()
    await kill(stack, victim)
    ledger.mark("sigkill")
    await asyncio.sleep(10)
    await kafka_up(stack)
    await asyncio.sleep(30 - (time.monotonic() - killed))
    await start_again(stack, victim)


# -- the tests -----------------------------------------------------------------------------------

async def test_a_kafka_down(stack: Stack, tmp_path):
    await scenario(stack, tmp_path, "a", 300001, outage)


async def test_b_replica_killed_and_back_after_30s(stack: Stack, tmp_path):
    await scenario(stack, tmp_path, "b", 310001, kill_and_return)


async def test_c_rolling_restart_and_3_to_4_to_3_fail_no_push(stack: Stack, tmp_path):
    await scenario(stack, tmp_path, "c", 320001, planned_operations, no_failures=True)


async def test_d_kafka_down_then_a_replica_holding_a_spool_killed(stack: Stack, tmp_path):
    await scenario(stack, tmp_path, "d", 330001, outage_and_loss)


async def test_e_rolling_restart_during_a_kafka_outage(stack: Stack, tmp_path):
    await scenario(stack, tmp_path, "e", 340001, rolling_restart_in_an_outage, longest_failure_s=30.0)


async def test_f_replica_frozen_for_30s(stack: Stack, tmp_path):
    await scenario(stack, tmp_path, "f", 350001, frozen_for_30s)
