"""Outage mode against a real broker, real TLS and a real disk: Kafka goes away under gateway load,
the bridge keeps answering "0" from its spool, and everything arrives in Kafka once, in order per
agent, after it comes back; also across a kill -9 of the bridge; a full or unusable spool refuses."""
from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from pathlib import Path

import orjson
import pytest
from conftest import TOKEN, bridge_env, headers_of, push_headers, read_topics

from bench.simulate import Ledger, SimSettings, Simulator
from bench.verify import compare, seen
from bridge.drainer import encode
from bridge.records import Record
from bridge.spool.format import frame
from tests.support import BridgeProcess, Broker, free_port

pytestmark = pytest.mark.integration

PUSH = orjson.dumps({"workNo": "80001", "eventList": [
    {"eventType": "AgentState_Ready", "workNo": "80001", "content": {"pad": "x" * 20_000}}]})


def simulator(bridge: BridgeProcess, tls_dir: Path, ledger: Ledger, agents: int = 40) -> Simulator:
    return Simulator(SimSettings(url=bridge.url, agents=agents, cafile=str(tls_dir / "ca.pem"), token=TOKEN,
                                 duration_s=300, retry_interval_s=1.0, timeout_s=8.0, think_s=(0.1, 0.6),
                                 drain_s=20), ledger)


async def management(client, bridge: BridgeProcess, path: str):
    return await client.request("GET", bridge.management_url + path)


async def readiness_within(client, bridge: BridgeProcess, status: int, timeout: float):
    """/readyz once it answers `status`, or its last answer after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        answer = await management(client, bridge, "/readyz")
        if answer.status == status or time.monotonic() > deadline:
            return answer
        await asyncio.sleep(0.05)


async def wait_for_mode(client, bridge: BridgeProcess, mode: str, timeout: float = 90.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):
            info = orjson.loads((await management(client, bridge, "/readyz")).body)
            if info.get("mode") == mode:
                return info
        assert time.monotonic() < deadline, f"mode {mode!r} not reached"
        await asyncio.sleep(0.2)


async def check_delivered(kafka: Broker, topic: str, ledger: Ledger) -> list:
    records = await read_topics(kafka, [topic])
    figures = compare(ledger, [seen(r) for r in records])
    assert figures.ok, f"{figures.line()}\n{figures.details()}"
    assert figures.events_acked > 0
    return records


@contextlib.asynccontextmanager
async def gateway_on_spooling_bridge(kafka: Broker, tls_dir: Path, tmp_path: Path, topic: str):
    """A bridge with a spool of its own under gateway load: (bridge, gateway, load task, ledger)."""
    bridge = BridgeProcess(bridge_env(kafka, topic, BRIDGE_SPOOL_DIR=str(tmp_path / "spool")), tls_dir).start(tmp_path)
    ledger = Ledger()
    gateway = simulator(bridge, tls_dir, ledger)
    load = asyncio.create_task(gateway.run())
    try:
        yield bridge, gateway, load, ledger
    finally:
        if not load.done():
            load.cancel()
        await bridge.astop()


async def test_kafka_stopped_under_load_every_push_answered_and_delivered_in_order(client, disposable_kafka, tls_dir,
                                                                                  tmp_path):
    topic = "test.outage.stop"
    async with gateway_on_spooling_bridge(disposable_kafka, tls_dir, tmp_path, topic) as (bridge, gateway, load, ledger):
        await asyncio.sleep(3)
        await asyncio.to_thread(disposable_kafka.kill)
        await wait_for_mode(client, bridge, "spooling")
        assert (await management(client, bridge, "/readyz")).status == 200, "a replica that can spool stays ready"
        await asyncio.sleep(6)
        spooled_during = gateway.pushes_acked
        await asyncio.to_thread(disposable_kafka.start)
        info = await wait_for_mode(client, bridge, "direct")
        await asyncio.sleep(2)
        gateway.stop()
        summary = await load
        metrics = (await management(client, bridge, "/metrics")).text
    assert sum(summary.failures.values()) == 0, f"pushes failed during the outage: {summary.line()}"
    assert spooled_during > 0 and info["spool"]["entries"] == 0
    records = await check_delivered(disposable_kafka, topic, ledger)
    spooled = [r for r in records if headers_of(r).get("bridge_spooled") == "true"]
    assert spooled, "no record went through the spool"
    line = next(x for x in metrics.splitlines() if x.startswith("bridge_spooled_pushes_total"))
    drained = next(x for x in metrics.splitlines() if x.startswith("bridge_drained_pushes_total"))
    assert float(line.split()[1]) == float(drained.split()[1]) > 0
    assert "outage mode ended" in bridge.log()


async def test_bridge_killed_while_spooling_loses_nothing_acknowledged(client, disposable_kafka, tls_dir, tmp_path):
    topic = "test.outage.kill"
    disposable_kafka.start()
    async with gateway_on_spooling_bridge(disposable_kafka, tls_dir, tmp_path, topic) as (bridge, gateway, load, ledger):
        await asyncio.sleep(2)
        await asyncio.to_thread(disposable_kafka.kill)
        await wait_for_mode(client, bridge, "spooling")
        await asyncio.sleep(3)
        await asyncio.to_thread(bridge.kill)
        await asyncio.to_thread(bridge.start)  # ready at once: its spool accepts, Kafka is still away
        assert "undelivered pushes" in bridge.log()
        await asyncio.sleep(3)
        await asyncio.to_thread(disposable_kafka.start)
        await wait_for_mode(client, bridge, "direct")
        gateway.stop()
        summary = await load
    assert summary.signed_out == 0
    await check_delivered(disposable_kafka, topic, ledger)


async def push_until_refused(client, bridge: BridgeProcess, limit: int = 400) -> tuple[int, object]:
    for accepted in range(limit):
        reply = await client.post(bridge.url, PUSH, push_headers())
        if reply.status != 200:
            return accepted, reply
    raise AssertionError(f"{limit} pushes accepted; the spool never refused")


async def test_a_full_spool_answers_503_never_0(client, kafka, tls_dir, tmp_path):
    env = bridge_env(kafka, "test.outage.full", BRIDGE_KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}",
                     BRIDGE_CREATE_TOPICS="false", BRIDGE_SPOOL_DIR=str(tmp_path / "spool"),
                     BRIDGE_SPOOL_MAX_BYTES=str(1 << 20))
    bridge = BridgeProcess(env, tls_dir).start(tmp_path)  # ready: Kafka is unreachable but the spool accepts
    try:
        accepted, refused = await push_until_refused(client, bridge)
        assert 30 <= accepted <= (1 << 20) // len(PUSH)
        assert refused.status == 503 and "full" in orjson.loads(refused.body)["message"]
        assert (await client.post(bridge.url, PUSH, push_headers())).status == 503
        ready = await readiness_within(client, bridge, 503, 2.0)  # decided 4 times a second, after leaving
        assert ready.status == 503 and "full" in orjson.loads(ready.body)["spool"]["problem"]
        spooled = sum(p.stat().st_size for p in (tmp_path / "spool").rglob("*.seg"))
        assert spooled <= 1 << 20
    finally:
        await bridge.astop()


@contextlib.contextmanager
def tmpfs(path: Path, options: str):
    """A real small file system (root only); skips the test where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


async def test_a_disk_that_fills_up_answers_503(client, kafka, tls_dir, tmp_path):
    with tmpfs(tmp_path / "small", "size=512k") as disk:
        env = bridge_env(kafka, "test.outage.enospc", BRIDGE_KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}",
                         BRIDGE_CREATE_TOPICS="false", BRIDGE_SPOOL_DIR=str(disk / "spool"))
        bridge = BridgeProcess(env, tls_dir).start(tmp_path)
        try:
            accepted, refused = await push_until_refused(client, bridge)
            assert accepted > 5
            answer = orjson.loads(refused.body)
            assert refused.status == 503 and "No space left on device" in answer["message"], answer
            assert "cannot write to disk" in bridge.log()
        finally:
            await bridge.astop()


async def test_an_unwritable_spool_directory_refuses_only_when_kafka_cannot_take_pushes(client, kafka, tls_dir,
                                                                                       tmp_path):
    with tmpfs(tmp_path / "ro", "ro,size=64k") as disk:
        down = bridge_env(kafka, "test.outage.ro", BRIDGE_KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}",
                          BRIDGE_CREATE_TOPICS="false", BRIDGE_SPOOL_DIR=str(disk / "spool"))
        bridge = BridgeProcess(down, tls_dir).start(tmp_path, ready=False)
        try:
            reply = await client.post(bridge.url, PUSH, push_headers())
            assert reply.status == 503 and "Read-only file system" in orjson.loads(reply.body)["message"]
            ready = await management(client, bridge, "/readyz")
            assert ready.status == 503 and "Read-only" in orjson.loads(ready.body)["spool"]["problem"]
        finally:
            await bridge.astop()
        up = bridge_env(kafka, "test.outage.ro", BRIDGE_SPOOL_DIR=str(disk / "spool"))
        bridge = BridgeProcess(up, tls_dir).start(tmp_path)  # Kafka usable: the bridge serves without its spool
        try:
            assert (await client.post(bridge.url, PUSH, push_headers())).status == 200
        finally:
            await bridge.astop()


async def test_a_push_kafka_refuses_for_good_is_set_aside_not_blocking_the_spool(client, kafka, tls_dir, tmp_path):
    """An event larger than the broker takes (message.max.bytes, about 1 MB by default) is refused
    by Kafka for good: the push is kept (answered "0"), set aside in the spool's refused/ directory,
    and the pushes behind it go on."""
    topic = "test.outage.refused"
    env = bridge_env(kafka, topic, BRIDGE_SPOOL_DIR=str(tmp_path / "spool"), BRIDGE_MAX_BODY_BYTES=str(3 << 20))
    bridge = BridgeProcess(env, tls_dir).start(tmp_path)
    huge = orjson.dumps({"workNo": "80002", "eventList": [
        {"eventType": "AgentMediaEvent_Record", "content": {"blob": "x" * 1_500_000}}]})
    try:
        reply = await client.post(bridge.url, huge, push_headers())
        assert (reply.status, orjson.loads(reply.body)["retcode"]) == (200, "0")
        await wait_for_mode(client, bridge, "direct", timeout=60)
        assert (await client.post(bridge.url, PUSH, push_headers())).status == 200
        metrics = (await management(client, bridge, "/metrics")).text
    finally:
        await bridge.astop()
    refused = list((tmp_path / "spool").glob("slot-*/refused/*.bin"))
    assert len(refused) == 1 and refused[0].stat().st_size > 1_500_000
    assert "bridge_spool_refused_entries_total 1.0" in metrics
    assert [r.key for r in await read_topics(kafka, [topic])] == [b"80001"]
    assert "Kafka refuses" in bridge.log()


async def test_a_spooled_entry_that_cannot_be_decoded_is_kept_in_corrupt_and_the_rest_delivered(client, kafka, tls_dir,
                                                                                                 tmp_path):
    """An intact entry whose payload is not a record list (the frame's CRC holds, so the disk did
    not damage it) left in the spool from before a start: the drainer keeps its payload in the
    slot's corrupt/ directory, counts it as damage, and delivers the entries around it in order."""
    topic = "test.outage.undecodable"
    slot = tmp_path / "spool" / "slot-0"
    slot.mkdir(parents=True)
    before, after = (Record(topic, b"80004", orjson.dumps({"n": n}), [("ce_id", f"undecodable-{n}".encode())])
                     for n in (1, 2))
    foreign = b"\xc1 not a record list"
    now = int(time.time() * 1000)
    entries = [frame(encode([before]), now), frame(foreign, now), frame(encode([after]), now)]
    (slot / f"{1:020d}.seg").write_bytes(b"".join(entries))
    bridge = BridgeProcess(bridge_env(kafka, topic, BRIDGE_SPOOL_DIR=str(tmp_path / "spool")), tls_dir).start(tmp_path)
    try:
        await wait_for_mode(client, bridge, "direct", timeout=60)
        metrics = (await management(client, bridge, "/metrics")).text
    finally:
        await bridge.astop()
    assert [p.read_bytes() for p in slot.glob("corrupt/*.bin")] == [foreign]
    assert "bridge_spool_corrupt_entries_total 1.0" in metrics
    delivered = [(r.key, r.value) for r in await read_topics(kafka, [topic])]
    assert delivered == [(b"80004", b'{"n":1}'), (b"80004", b'{"n":2}')]
    assert "cannot be decoded" in bridge.log()
