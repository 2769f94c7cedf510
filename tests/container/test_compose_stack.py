"""The compose project under a gateway's load: three bridge replicas behind the agent-affine router,
one stopped with SIGTERM and one killed with SIGKILL while pushes flow, a spool kept across a
restart of its container, and the containers' hardening.

The gateway is bench.simulate's Simulator (signed-in agents pushing one request at a time over
keep-alive HTTPS, the same body again after a failure); bench.verify reads every record back from
the project's Kafka and compares it with the simulator's ledger of acknowledged pushes. The
gateway's retry interval is 1 s here instead of 10 s, to keep the test short; test_scenarios.py
runs the gateway's real timings with 200 agents.
"""
from __future__ import annotations

import asyncio
import json
import re
import time
from datetime import datetime

import pytest

from bench.simulate import Ledger
from bench.verify import compare, read_committed, read_topics, seen

from .gateway import (
    OK_PUSHES,
    TOPIC,
    gateway,
    kafka_down,
    kafka_up,
    kill,
    read_back,
    spooled,
    spools_delivered,
    start_again,
    until,
)
from .stack import REPLICAS, Stack

pytestmark = pytest.mark.container

AGENTS = 16
SPOOL_DIR = "/var/lib/cc-bridge/spool"


# -- the router's log -----------------------------------------------------------------------------

def state_changes(stack: Stack, server: str, since: float) -> list[tuple[float, str]]:
    """(time, "DOWN"|"UP") of `server`'s health changes logged after `since`."""
    pattern = re.compile(rf"Server bridges/{re.escape(server)}\b.* is (DOWN|UP)\b")
    return [(t, m.group(1)) for t, line in stack.router_log() if t >= since and (m := pattern.search(line))]


# -- the replicas' logs ---------------------------------------------------------------------------
# The router logs only what goes wrong; which replica took a push is in that replica's own log.

def accepted(stack: Stack, container: str, since: float) -> list[tuple[float, str]]:
    """(time, workNo) of every push that `container` logged as accepted after `since`."""
    found = []
    for line in stack.engine.podman("logs", container).stderr.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("operation") == "pushEvent" and entry.get("retcode") == "0":
            at = datetime.fromisoformat(entry["time"]).timestamp()
            if at >= since:
                found.append((at, entry["workNo"]))
    return found


def accepted_pushes(stack: Stack, container: str, since: float) -> set[str]:
    """workNo of every push that `container` logged as accepted after `since`."""
    return {work_no for _, work_no in accepted(stack, container, since)}


# -- the tests -----------------------------------------------------------------------------------

def test_containers_are_locked_down(stack: Stack):
    """Non-root, read-only root file system (writable only /tmp and the spool volume), the image's
    health check passing, and no published port but the router's and Kafka's host port."""
    bridges = stack.containers("bridge")
    assert len(bridges) == REPLICAS
    for bridge in bridges:
        info = stack.engine.inspect(bridge)
        assert info["Config"]["User"] == "10001:10001"
        assert stack.exec(bridge, "id", "-u").stdout.strip() == "10001"
        assert info["HostConfig"]["ReadonlyRootfs"] is True
        denied = stack.exec(bridge, "touch", "/opt/cc-bridge/probe", check=False)
        assert denied.returncode != 0 and "Read-only file system" in denied.stderr
        for writable in ("/tmp", SPOOL_DIR):
            probe = stack.exec(bridge, "sh", "-c", f"echo x > {writable}/.probe-{bridge} && rm {writable}/.probe-{bridge}",
                               check=False)
            assert probe.returncode == 0, f"{bridge}: {writable} is not writable by the bridge: {probe.stderr}"
        # The image's own health check command, run by the engine, then against a dead port.
        assert stack.engine.podman("healthcheck", "run", bridge, check=False).returncode == 0
        test = info["Config"]["Healthcheck"]["Test"]
        assert test[0] == "CMD"
        unhealthy = stack.engine.podman("exec", "--env", "BRIDGE_MANAGEMENT_PORT=1", bridge, *test[1:], check=False)
        assert unhealthy.returncode != 0, "the health check passes against a port where nothing listens"
        # Exposed for the compose network, published nowhere.
        assert not any(info["NetworkSettings"]["Ports"].values()), info["NetworkSettings"]["Ports"]
        assert stack.engine.podman("port", bridge).stdout.strip() == ""
        assert stack.management(bridge, "/readyz")[0] == 200
    published = {svc: stack.engine.podman("port", stack.container(svc)).stdout.split("\n")[0]
                 for svc in ("router", "kafka")}
    assert published == {"router": f"8043/tcp -> 127.0.0.1:{stack.push_port}",
                         "kafka": f"9092/tcp -> 127.0.0.1:{stack.kafka_port}"}
    router = stack.engine.inspect(stack.container("router"))
    assert router["HostConfig"]["ReadonlyRootfs"] is True and router["Config"]["User"] == "99:99"
    # Every replica is a server of the router, by its container name, and in use.
    assert {stack.server_of(b) for b in bridges} <= {s for s, state in stack.router_states().items() if state == "UP"}


async def test_pushes_survive_sigterm_and_sigkill_of_replicas(stack: Stack, tmp_path):
    ledger = Ledger(tmp_path / "ledger.jsonl")
    sim = gateway(stack, ledger)
    run = asyncio.create_task(sim.run())
    try:
        bridges = stack.containers("bridge")
        await until(lambda: all(stack.metrics(b).get(OK_PUSHES, 0) > 0 for b in bridges), 30,
                    "every replica answering pushes through the router")
        await each_agent_on_one_replica(stack, bridges)
        await stop_one_with_sigterm(stack, ledger, bridges[0])
        await kill_one_with_sigkill(stack, ledger)
    finally:
        sim.stop()
        summary = await run
        ledger.close()
    print(summary.line())
    figures = compare(ledger, await read_topics(stack.kafka_options(), [TOPIC], 120))
    print(figures.line())
    assert figures.ok, figures.details()
    assert figures.pushes_acked == summary.pushes_acked > 100
    assert summary.signed_out == summary.abandoned == summary.events_unsent == 0


async def each_agent_on_one_replica(stack: Stack, bridges: list[str]) -> None:
    """While every replica is up, the router sends every push of an agent to one of them (by the
    body's workNo: the simulator's callback URL names no agent), and each replica sees the key it
    was routed by."""
    def every_agent_routed() -> dict[str, set[str]] | None:
        routed: dict[str, set[str]] = {}
        for bridge in bridges:
            for work_no in accepted_pushes(stack, bridge, 0.0):
                routed.setdefault(work_no, set()).add(bridge)
        return routed if len(routed) == AGENTS else None

    routed = await until(every_agent_routed, 30, f"pushes of all {AGENTS} agents in the replicas' logs")
    spread = {agent: replicas for agent, replicas in routed.items() if len(replicas) > 1}
    assert not spread, f"agents whose pushes went to several replicas: {spread}"
    assert set().union(*routed.values()) == set(bridges), routed
    for bridge in bridges:
        missed = {k: v for k, v in stack.metrics(bridge).items() if k.startswith("bridge_affinity_misses_total")}
        assert missed and not any(missed.values()), f"{bridge}: {missed}"


async def stop_one_with_sigterm(stack: Stack, ledger: Ledger, victim: str) -> None:
    """`podman stop`: SIGTERM (the image's STOPSIGNAL), the bridge drains and exits 0; the router
    marks it DOWN and sends it no push until it is started again."""
    server = stack.server_of(victim)
    ledger.mark("sigterm")
    stopped_at = time.time()
    await asyncio.to_thread(stack.engine.podman, "stop", "--time", "35", victim)
    state = (await asyncio.to_thread(stack.engine.inspect, victim))["State"]
    assert state["ExitCode"] == 0, f"{victim} did not stop cleanly on SIGTERM: {state}"
    changes = await until(lambda: [c for c in state_changes(stack, server, stopped_at) if c[1] == "DOWN"], 30,
                          f"the router marking {server} ({victim}) DOWN")
    down_at = changes[0][0]
    await asyncio.sleep(3)  # pushes keep flowing, to the other replica only
    assert await asyncio.to_thread(accepted, stack, victim, 0.0), f"{victim} accepted no push at all"
    # A push sent to a replica that is gone fails, and the router logs every failure.
    late = [r for t, r in await asyncio.to_thread(stack.router_requests) if t > down_at and r.server == server]
    assert not late, f"{len(late)} pushes went to {server} ({victim}) after it was marked DOWN: {late[:3]}"
    await asyncio.to_thread(stack.engine.podman, "start", victim)
    await until(lambda: stack.management(victim, "/readyz")[0] == 200, 60, f"{victim} ready again")
    ledger.mark("restored")


async def kill_one_with_sigkill(stack: Stack, ledger: Ledger) -> None:
    """SIGKILL a replica while it holds pushes: they get no answer from it, and the router answers
    them 503 rather than hand them to another replica (which could reorder the agent's pushes). The
    gateway's retry of each is accepted by a surviving replica. Kafka is paused for a moment so
    that pushes are in flight."""
    bridges = stack.containers("bridge")
    kafka = stack.container("kafka")
    await until(lambda: all(stack.management(b, "/readyz")[0] == 200 for b in bridges), 60, "every replica ready")
    await until(lambda: all(stack.router_states().get(stack.server_of(b)) == "UP" for b in bridges), 30,
                "the router using every replica")
    await asyncio.to_thread(stack.engine.podman, "pause", kafka)
    try:
        _, victim = await until(lambda: busiest(stack, bridges), 15, "pushes in flight on a replica")
        ledger.mark("sigkill")
        killed_at = time.time()
        await kill(stack, victim)
    finally:
        await asyncio.to_thread(stack.engine.podman, "unpause", kafka)
    ledger.mark("restored")
    survivors = [b for b in bridges if b != victim]
    # The victim stays down until it is started again below: every retry meanwhile lands on a survivor.

    def failures_answered() -> tuple[set[str], set[str]] | None:
        """(agents whose push failed since the kill, agents answered on a retry since), once there
        are failures and each of them was answered on its retry."""
        failed = {e["agent"] for e in ledger.entries if e["kind"] == "fail" and e["t"] >= killed_at}
        retried = {e["agent"] for e in ledger.entries if e["kind"] == "ack" and e["t"] > killed_at and e["tries"] > 1}
        return (failed, retried) if failed and failed <= retried else None

    found = await until(failures_answered, 40, f"pushes in flight on {victim} failed, then accepted on retry")
    failed = found[0]
    handed_on = [r for t, r in await asyncio.to_thread(stack.router_requests) if t >= killed_at and r.redispatched]
    assert not handed_on, f"the router handed pushes to another replica than the hash gives: {handed_on[:3]}"
    taken: set[str] = set()
    for survivor in survivors:
        taken |= await asyncio.to_thread(accepted_pushes, stack, survivor, killed_at)
    assert failed <= taken, f"retries of {failed - taken} were not accepted by {survivors}"
    await start_again(stack, victim, 60)


def busiest(stack: Stack, bridges: list[str]) -> tuple[float, str] | None:
    counts = [(stack.metrics(b).get("bridge_inflight_pushes", 0.0), b) for b in bridges]
    best = max(counts)
    return best if best[0] > 0 else None


async def test_spool_survives_a_restart_of_its_container(stack: Stack, tmp_path):
    """Kafka stopped: pushes are spooled and answered "0"; the bridges that spooled are restarted
    (their containers, not their volume); Kafka started: every acknowledged event arrives, in offset
    order per agent, marked as having gone through the spool."""
    ledger = Ledger(tmp_path / "ledger.jsonl")
    await kafka_down(stack)
    ledger.mark("kafka-stopped")
    summary = await gateway(stack, ledger, agents=4, max_pushes=24, duration_s=60.0, drain_s=30.0,
                            first_work_no=200001).run()
    ledger.close()
    assert summary.pushes_acked >= 24 and summary.signed_out == 0, summary.line()
    held = spooled(stack)
    holders = [b for b, entries in held.items() if entries > 0]
    assert holders, f"Kafka is down and pushes were acknowledged, yet no replica holds a spool: {held}"
    for bridge in holders:
        await asyncio.to_thread(stack.engine.podman, "restart", "--time", "35", bridge)
    await kafka_up(stack)
    await spools_delivered(stack)
    # The restarted processes started their counters again: what they count was read from the volume.
    bridges = stack.containers("bridge")
    drained = sum(stack.metrics(b).get("bridge_drained_pushes_total", 0.0) for b in bridges)
    assert drained > 0, f"nothing drained after the restart, yet the spools held {held}"
    # The replicas share the spool volume: each agent's events are in offset order, not only by
    # receipt time.
    figures = await read_back(stack, ledger)
    assert figures.ok and figures.events_found == figures.events_acked, figures.details()
    raw = await read_committed_since(stack, ledger)
    assert raw and all(dict(r.headers).get("bridge_spooled") == b"true" for r in raw)


async def read_committed_since(stack: Stack, ledger: Ledger) -> list:
    """The records of the pushes this ledger acknowledged (while Kafka was down)."""
    acked = {(e["agent"], gen) for e in ledger.of_kind("ack") for gen in e["ids"]}
    return [r for r in await read_committed(stack.kafka_options(), [TOPIC], 120)
            if (s := seen(r)).agent is not None and (s.agent, s.gen_time) in acked]
