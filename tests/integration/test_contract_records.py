"""Every record a real bridge writes matches docs/contracts/asyncapi.yaml: key, headers and value.

One bridge (HTTPS, mutual TLS to the broker, a routing rule, its own dead-letter topic) gets a
realistic mix: agents living through the simulator's call stories, a gateway retry (the very same
body twice), liberal inputs, and malformed pushes that end in the dead-letter topic. Everything the
topics then hold is read back (committed data) and checked against the document.
"""
from __future__ import annotations

import asyncio
import random
import time
import uuid
from datetime import datetime

import aiohttp
import orjson
import pytest
from conftest import bridge_env, client_context, headers_of, push_headers, read_topics
from contract_docs import AsyncApi

from bench.simulate import agent_story
from tests.support import BridgeProcess, free_port

pytestmark = pytest.mark.integration

AGENTS = ("71001", "71002", "71003")
LIBERAL = [
    {"workNo": 72001, "eventList": [
        {"eventType": "AgentState_SetNotReady_Success", "workNo": 72001, "content": {"reason": "200"}},
        {"eventType": "AgentEvent_Call_Release", "workNo": "", "content": "1456403549-15"},
        {"eventType": "AgentState_Ready", "content": None},
        {"eventType": "AgentState_Ready", "content": None},
        {"eventType": "Vendor_Brand_New_Event", "workNo": None, "content": [1, "2", None, 3.25],
         "someFutureField": {"x": "y"}, "名字": "座席"},
        {"eventType": "AgentMediaEvent_Record", "content": {"taskId": 123456789012, "fileMediaType": "1"}},
    ], "extraTopLevel": True},
    {"workNo": "72002", "eventList": [{"eventType": "AgentOther_ShutdownService", "workNo": "72002",
                                       "content": {"loginTime": "1471585949806"}}]},
]
# Pushes that can never succeed as sent: kept whole in the dead-letter topic (answered 400/413/415
# in refuse mode, "0" in quarantine mode).
MALFORMED = [
    ("not JSON", {}, b'{"workNo": "73001", "eventList": [{"eventType": '),
    ("one bad event", {}, orjson.dumps({"workNo": "73002", "eventList": [
        {"eventType": "AgentState_Ready", "content": None}, {"eventType": 42}]})),
    ("too large", {}, orjson.dumps({"workNo": "73003", "eventList": [{"eventType": "A", "content": "x" * 70_000}]})),
    ("not JSON media type", {"Content-Type": "text/plain"}, b"workNo=73004"),
]


def story_pushes(agent: str, pushes: int, seed: int) -> list[bytes]:
    """The first `pushes` bursts of a simulated agent's day, one push each, stamped like the simulator."""
    story, stamp = agent_story(agent, random.Random(seed)), 1_763_900_000_000 + seed * 1000
    bodies = []
    for _ in range(pushes):
        events = []
        for event_type, content in next(story):
            stamp += 850
            events.append({"eventType": event_type, "workNo": agent, "content": content, "eventGenTime": stamp})
        bodies.append(orjson.dumps({"workNo": agent, "eventList": events}))
    return bodies


async def send(url: str, tls_dir, bodies: list[tuple[bytes, dict]]) -> list[int]:
    connector = aiohttp.TCPConnector(ssl=client_context(tls_dir))
    async with aiohttp.ClientSession(connector=connector, skip_auto_headers=["Content-Type"]) as session:
        statuses = []
        for body, headers in bodies:
            async with session.post(url, data=body, headers=push_headers(**headers)) as response:
                await response.read()
                statuses.append(response.status)
        return statuses


@pytest.fixture(scope="module")
def written(kafka, tls_dir, tmp_path_factory):
    """Run the mix through one bridge; return (what was pushed, the records of each topic)."""
    suffix = uuid.uuid4().hex[:8]
    topics = {"events": f"test.contract.events.{suffix}", "media": f"test.contract.media.{suffix}",
              "dead": f"test.contract.dead.{suffix}"}
    env = bridge_env(kafka, topics["events"], BRIDGE_ROUTES=f"AgentMediaEvent_*={topics['media']}",
                     BRIDGE_DEAD_LETTER_TOPIC=topics["dead"], BRIDGE_MAX_BODY_BYTES="65536")
    process = BridgeProcess(env, tls_dir).start(tmp_path_factory.mktemp("logs"))
    accepted = [body for n, agent in enumerate(AGENTS) for body in story_pushes(agent, 8, n)]
    retried = accepted[3]  # the gateway sends a push again when it did not get "0" for it
    accepted += [retried] + [orjson.dumps(push) for push in LIBERAL]
    try:
        statuses = asyncio.run(send(process.url, tls_dir, [(b, {}) for b in accepted]
                                    + [(body, headers) for _, headers, body in MALFORMED]))
    finally:
        process.stop()
    assert statuses[:len(accepted)] == [200] * len(accepted)
    assert all(status in (200, 400, 413, 415) for status in statuses[len(accepted):])
    records = {name: asyncio.run(read_topics(kafka, [topic])) for name, topic in topics.items()}
    return accepted, records


def test_every_event_record_matches_the_contract(written):
    accepted, records = written
    contract = AsyncApi()
    sent = [event for body in accepted for event in orjson.loads(body)["eventList"]]
    assert len(records["events"]) + len(records["media"]) >= len(sent), "every accepted event is in Kafka"
    assert records["media"], "the routing rule sent the recording events to their own topic"
    problems = {}
    for part, channel in (("events", "agentEvents"), ("media", "routedAgentEvents")):
        message = contract.message(channel)
        for record in records[part]:
            found = message.violations(record.key, record.headers, record.value)
            if found:
                problems[f"{record.topic}@{record.partition}:{record.offset}"] = found
    assert problems == {}


def test_event_records_carry_what_the_document_says(written):
    """The rules the document states in prose: key = ce_subject = the resolved agent, ce_type = the
    value's eventType, the value = the event as sent, the push position headers."""
    accepted, records = written
    expected = {}
    for body in accepted:
        push = orjson.loads(body)
        for event in push["eventList"]:
            agent = event.get("workNo") if event.get("workNo") not in (None, "") else push["workNo"]
            expected.setdefault(str(agent), []).append(event)
    got: dict[str, list] = {}
    for record in records["events"] + records["media"]:
        headers = headers_of(record)
        value = orjson.loads(record.value)
        assert headers["ce_subject"] == record.key.decode()
        assert headers["ce_type"] == value["eventType"]
        assert int(headers["ce_pushindex"]) < int(headers["ce_pushsize"])
        assert value["eventType"].startswith("AgentMediaEvent_") == record.topic.startswith("test.contract.media.")
        got.setdefault(record.key.decode(), []).append((record.topic, record.offset, value))
    for agent, events in expected.items():
        in_kafka = [value for _, _, value in sorted(got[agent], key=lambda item: (item[0], item[1]))]
        assert sorted(map(orjson.dumps, in_kafka)) == sorted(map(orjson.dumps, events)), agent


def test_dead_letter_records_match_the_contract_apart_from_their_type(written):
    _, records = written
    contract = AsyncApi()
    kept = records["dead"]
    # kept as received; a body refused by its declared length alone was never read
    assert sorted(r.value for r in kept) == sorted(body if len(body) <= 65536 else b"" for _, _, body in MALFORMED)
    assert {headers_of(r)["bridge_status"] for r in kept} == {"400", "413", "415"}
    message = contract.message("deadLetters")
    for record in kept:
        found = message.violations(record.key, record.headers, record.value)
        found.pop("headers/ce_type", None)  # checked on its own, below
        assert found == {}, headers_of(record)


def test_dead_letter_records_have_the_quarantine_type(written):
    _, records = written
    message = AsyncApi().message("deadLetters")
    for record in records["dead"]:
        assert "headers/ce_type" not in message.violations(record.key, record.headers, record.value), \
            headers_of(record)["ce_type"]


async def test_records_written_through_the_spool_match_the_contract_and_a_direct_write(kafka, tls_dir, tmp_path,
                                                                                     bridge, topic):
    """A bridge that cannot reach Kafka keeps the push in its spool and answers "0"; a bridge
    started later on the same spool directory publishes it."""
    body = story_pushes("74001", 1, 9)[0]
    spool, spooled_topic = tmp_path / "spool", f"test.contract.spooled.{uuid.uuid4().hex[:8]}"
    offline = BridgeProcess(bridge_env(kafka, spooled_topic, BRIDGE_SPOOL_DIR=str(spool), BRIDGE_PUBLISH_TIMEOUT_S="2",
                                BRIDGE_KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}"), tls_dir)
    offline.start(tmp_path, ready=False)
    try:
        received_before = time.time()
        assert await send(offline.url, tls_dir, [(body, {})]) == [200]
    finally:
        await offline.astop()
    assert await send(bridge.url, tls_dir, [(body, {})]) == [200]  # the same push, written directly
    direct = [r for r in await read_topics(kafka, [topic]) if r.key == b"74001"]
    restarted_at = time.time()
    online = BridgeProcess(bridge_env(kafka, spooled_topic, BRIDGE_SPOOL_DIR=str(spool)), tls_dir).start(tmp_path)
    try:
        for _ in range(60):
            drained = await read_topics(kafka, [spooled_topic])
            if len(drained) >= len(direct):
                break
            await asyncio.sleep(0.5)
    finally:
        await online.astop()
    message = AsyncApi().message("agentEvents")
    assert [message.violations(r.key, r.headers, r.value) for r in drained] == [{}] * len(direct)
    assert [(r.key, r.value, headers_of(r)["ce_id"]) for r in drained] == \
        [(r.key, r.value, headers_of(r)["ce_id"]) for r in direct]
    assert all(headers_of(r)["bridge_spooled"] == "true" for r in drained)
    assert all("bridge_spooled" not in headers_of(r) for r in direct)
    kept_at = datetime.fromisoformat(headers_of(drained[0])["ce_time"]).timestamp()
    assert received_before - 0.01 <= kept_at < restarted_at, "ce_time is the time of the original receipt"
