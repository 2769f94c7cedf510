"""Several replicas, one spool volume: an agent's pushes stay in order in Kafka when the agent-affine
router moves it between replicas (a replica killed with a spool, a replica coming back), a replica
stopped with SIGTERM delivers its spool before it exits, and `cc-bridge drain` delivers a slot left
behind. Real bridge processes, a real broker of the module's own (the tests kill and restart it),
a real shared directory; the tests route each agent by hand, as the router would."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from conftest import bridge_env, push_headers, read_topics

from bench.verify import seen
from bridge.drainer import encode
from bridge.records import Record
from bridge.spool.format import frame
from tests.support import ROOT, BridgeProcess, Broker, free_port

pytestmark = pytest.mark.integration

FAST = {"BRIDGE_JOIN_WINDOW_S": "2", "BRIDGE_LOG_LEVEL": "info"}


def replica(kafka: Broker, topic: str, spool: Path, tls_dir: Path, **extra: str) -> BridgeProcess:
    return BridgeProcess(bridge_env(kafka, topic, BRIDGE_SPOOL_DIR=str(spool), **{**FAST, **extra}), tls_dir)


def body(agent: str, number: int) -> bytes:
    return orjson.dumps({"workNo": agent, "eventList": [
        {"eventType": "AgentState_Ready", "workNo": agent, "eventGenTime": number}]})


async def push(client, bridge: BridgeProcess, agent: str, numbers: range) -> None:
    """The gateway's way: one push at a time per agent, the next once the last was answered "0"."""
    for number in numbers:
        reply = await client.post(bridge.url, body(agent, number), push_headers())
        assert (reply.status, orjson.loads(reply.body)["retcode"]) == (200, "0"), reply.text


async def mode(bridge: BridgeProcess) -> dict:
    return await asyncio.to_thread(bridge.readiness)


async def until(condition, what: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, f"not reached within {timeout:g} s: {what}"
        await asyncio.sleep(0.2)


async def spooling(bridge: BridgeProcess) -> None:
    async def check() -> bool:
        return (await mode(bridge)).get("mode") == "spooling"
    await until(check, f"{bridge.url} spooling")


async def settled(*bridges: BridgeProcess) -> None:
    """Every replica sends straight to Kafka again: its spool, and every slot it adopted, delivered."""
    async def check() -> bool:
        for bridge in bridges:
            info = await mode(bridge)
            if info.get("mode") != "direct" or {"adopted", "holding"} & set(info.get("spool", {})):
                return False
        return True
    await until(check, "every spool delivered")


async def numbers_of(kafka: Broker, topic: str, agent: str) -> list[int]:
    """The agent's eventGenTime values in Kafka in offset order, repeated ce_id dropped (as a consumer does)."""
    found, ids = [], set()
    for record in map(seen, await read_topics(kafka, [topic])):
        if record.agent == agent and record.ce_id not in ids:
            ids.add(record.ce_id)
            found.append(record.gen_time)
    return found


async def kill_kafka(kafka: Broker) -> None:
    await asyncio.to_thread(kafka.kill)


async def start_kafka(kafka: Broker) -> None:
    await asyncio.to_thread(kafka.start)


@pytest.mark.parametrize("kafka_back_first", [False, True], ids=["kafka-back-after", "kafka-back-before"])
async def test_a_replica_killed_with_a_spool_its_agents_next_pushes_wait_for_it(client, disposable_kafka, tls_dir,
                                                                                  tmp_path, kafka_back_first):
    """Kafka down, A spools agent X, A is killed, X's next pushes go to B (the router moved X):
    Kafka has every push of X, in push order. Also when Kafka is back before B gets X's pushes."""
    topic = f"test.replicas.kill.{int(kafka_back_first)}"
    spool = tmp_path / "spool"
    a = replica(disposable_kafka, topic, spool, tls_dir).start(tmp_path)
    b = replica(disposable_kafka, topic, spool, tls_dir).start(tmp_path)
    try:
        await push(client, a, "X", range(1, 4))  # straight to Kafka
        await kill_kafka(disposable_kafka)
        await spooling(a)
        await push(client, a, "X", range(4, 9))
        await push(client, b, "Y", range(1, 4))
        await a.astop(signal.SIGKILL)
        if kafka_back_first:
            await start_kafka(disposable_kafka)
            await push(client, b, "X", range(9, 15))
        else:
            await push(client, b, "X", range(9, 15))
            await start_kafka(disposable_kafka)
        await settled(b)
    finally:
        await b.astop()
        await a.astop()
    assert await numbers_of(disposable_kafka, topic, "X") == list(range(1, 15))
    assert await numbers_of(disposable_kafka, topic, "Y") == [1, 2, 3]
    log = b.log()
    assert "holding" in log and "left behind" in log and "hold released" in log


async def test_a_replica_coming_back_holds_its_agents_pushes_until_the_others_delivered_theirs(
        client, disposable_kafka, tls_dir, tmp_path):
    """B spooled agent X (behind a backlog of other agents) while Kafka was down; A starts and the
    router gives X back to it; X's pushes to A reach Kafka only after those B spooled."""
    topic = "test.replicas.return"
    spool = tmp_path / "spool"
    b = replica(disposable_kafka, topic, spool, tls_dir).start(tmp_path)
    a = replica(disposable_kafka, topic, spool, tls_dir, BRIDGE_JOIN_WINDOW_S="60")
    try:
        await kill_kafka(disposable_kafka)
        await spooling(b)
        await asyncio.gather(*(push(client, b, f"other-{n}", range(1, 41)) for n in range(40)))
        await push(client, b, "X", range(1, 6))
        await asyncio.to_thread(a.start, tmp_path)
        await push(client, a, "X", range(6, 11))
        assert (await mode(a))["spool"]["holding"]["waiting_for"] == [b_slot(b)]
        await start_kafka(disposable_kafka)
        await settled(a, b)
    finally:
        await a.astop()
        await b.astop()
    assert await numbers_of(disposable_kafka, topic, "X") == list(range(1, 11))
    assert "hold released" in a.log()


def b_slot(bridge: BridgeProcess) -> str:
    return Path(bridge.readiness()["spool"]["directory"]).name


def prefill(slot: Path, topic: str, count: int, agents: int) -> None:
    """A slot as a bridge leaves it: `count` spooled pushes of `agents` agents (A0, A1, ...) taking
    turns, each agent's numbered from 1."""
    slot.mkdir(parents=True)
    now = int(time.time() * 1000)
    frames = (frame(encode([Record(topic, f"A{n % agents}".encode(), orjson.dumps({"eventGenTime": n // agents + 1}),
                                   [("ce_id", f"{n}".encode())])]), now) for n in range(count))
    (slot / f"{1:020d}.seg").write_bytes(b"".join(frames))


async def every_agent_in_order(kafka: Broker, topic: str, count: int, agents: int) -> None:
    numbers: dict[str, list[int]] = {}
    ids = set()
    for record in map(seen, await read_topics(kafka, [topic])):
        if record.ce_id not in ids:
            ids.add(record.ce_id)
            numbers.setdefault(record.agent, []).append(record.gen_time)
    assert len(ids) == count
    for agent in range(agents):
        assert numbers[f"A{agent}"] == list(range(1, len(numbers[f"A{agent}"]) + 1)), f"A{agent} out of order"


async def test_sigterm_with_a_spool_delivers_it_before_exiting(client, disposable_kafka, tls_dir, tmp_path):
    """Kafka usable, a large spool still being delivered when SIGTERM comes: the bridge exits only
    once it is all in Kafka (a scale-down leaves nothing behind)."""
    topic = "test.replicas.term"
    spool = tmp_path / "spool"
    prefill(spool / "slot-0", topic, 60_000, agents=600)
    # No leave grace: the exit drain, not the drainer during the grace, is what is tested here.
    bridge = replica(disposable_kafka, topic, spool, tls_dir, BRIDGE_EXIT_DRAIN_TIMEOUT_S="40",
                     BRIDGE_LEAVE_GRACE_S="0").start(tmp_path)
    assert (await mode(bridge))["spool"]["entries"] > 0, "delivered before SIGTERM: make the spool larger"
    assert await bridge.astop() == 0
    assert "every spooled push is delivered" in bridge.log()
    assert not list((spool / "slot-0").glob("*.seg"))
    await every_agent_in_order(disposable_kafka, topic, 60_000, agents=600)


def run_drain(kafka: Broker, topic: str, spool: Path, *args: str, **extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env.update(bridge_env(kafka, topic, **extra))
    return subprocess.run([sys.executable, "-m", "bridge", "drain", "--spool-dir", str(spool), *args], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


async def test_drain_command_delivers_a_slot_left_behind_in_order(disposable_kafka, tmp_path):
    topic = "test.replicas.drain"
    spool = tmp_path / "spool"
    prefill(spool / "slot-3", topic, 500, agents=50)
    down = await asyncio.to_thread(run_drain, disposable_kafka, topic, spool, "--timeout", "5",
                                   BRIDGE_KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}")
    assert down.returncode == 3, down.stdout + down.stderr
    assert "Kafka is not usable" in down.stdout and "500 pushes kept" in down.stdout
    assert [p.stat().st_size for p in (spool / "slot-3").glob("*.seg")] != []
    done = await asyncio.to_thread(run_drain, disposable_kafka, topic, spool)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "slot-3: 500 pushes delivered in order; the slot is empty" in done.stdout
    assert not list((spool / "slot-3").glob("*.seg"))
    await every_agent_in_order(disposable_kafka, topic, 500, agents=50)
    again = await asyncio.to_thread(run_drain, disposable_kafka, topic, spool)
    assert again.returncode == 0 and "nothing to deliver" in again.stdout
