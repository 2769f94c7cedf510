"""Completeness and per-agent order, read back from the real broker."""
from __future__ import annotations

import asyncio
import random
import uuid
from collections import defaultdict

import orjson
import pytest
from conftest import bridge_env, headers_of, push_headers, read_topics

from tests.support import BridgeProcess

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", params=["idempotent", "atomic"])
def bridge(request, kafka, tls_dir, tmp_path_factory):
    """A bridge per delivery mode: the same guarantees must hold in both."""
    topic = f"test.order.{request.param}.{uuid.uuid4().hex[:8]}"
    env = bridge_env(kafka, topic, BRIDGE_ATOMIC_PUSHES="true" if request.param == "atomic" else "false")
    process = BridgeProcess(env, tls_dir).start(tmp_path_factory.mktemp("logs"))
    process.topic = topic
    yield process
    process.stop()

AGENTS = 500
PUSHES_PER_AGENT = 20
CALL = ["AgentOther_PhoneAlerting", "AgentEvent_Ringing", "AgentEvent_Talking", "AgentEvent_Call_Release",
        "AgentState_Work", "AgentState_Ready"]


def agent_push(work_no: str, push_no: int, size: int) -> dict:
    return {"workNo": work_no, "eventList": [
        {"eventType": CALL[(push_no + i) % len(CALL)], "workNo": work_no,
         "content": {"callid": f"{work_no}-{push_no}", "seq": push_no * 100 + i}, "eventGenTime": 1795480000000 + push_no}
        for i in range(size)
    ]}


async def test_every_acknowledged_event_once_and_in_order_per_agent(client, bridge, kafka):
    rng = random.Random(7)
    sent: dict[str, list[int]] = defaultdict(list)  # acknowledged seq values per agent, in order
    failures = []

    async def agent(n: int) -> None:
        work_no = str(100000 + n)
        for push_no in range(PUSHES_PER_AGENT):
            body = agent_push(work_no, push_no, rng.randint(2, 6))
            response = await client.post(bridge.url, orjson.dumps(body), headers=push_headers())
            if response.status != 200:
                failures.append(response.text)
                continue
            sent[work_no].extend(e["content"]["seq"] for e in body["eventList"])

    await asyncio.gather(*(agent(n) for n in range(AGENTS)))
    assert failures == []
    acknowledged = sum(len(v) for v in sent.values())

    found: dict[str, list[int]] = defaultdict(list)
    partitions_of: dict[str, set[int]] = defaultdict(set)
    for record in await read_topics(kafka, [bridge.topic]):
        event = orjson.loads(record.value)
        if not isinstance(event.get("content"), dict) or "seq" not in event["content"]:
            continue  # events of other tests in this module
        work_no = record.key.decode()
        assert event["workNo"] == work_no == headers_of(record)["ce_subject"]
        found[work_no].append(event["content"]["seq"])
        partitions_of[work_no].add(record.partition)

    assert len(sent) == AGENTS and acknowledged >= AGENTS * PUSHES_PER_AGENT * 2
    assert sum(len(v) for v in found.values()) == acknowledged, "lost or duplicated events"
    for work_no, seqs in sent.items():
        assert found[work_no] == seqs, f"agent {work_no}: events missing, repeated or out of order"
        assert len(partitions_of[work_no]) == 1, f"agent {work_no} spread over partitions"


async def test_concurrent_pushes_of_one_agent_never_interleave(client, bridge, kafka):
    # Events of ~4 KB fill the producer's 16 KB batches, so appending a push has to wait for the
    # sender mid-push: without per-agent locking, concurrent pushes would interleave here.
    work_no = "777777"
    pushes, events_per_push = 30, 12
    bodies = [{"workNo": work_no, "eventList": [
        {"eventType": "AgentChat_DataRecved", "workNo": work_no,
         "content": {"push": p, "index": i, "text": "x" * 4000}} for i in range(events_per_push)]}
        for p in range(pushes)]
    responses = await asyncio.gather(*(client.post(bridge.url, orjson.dumps(b), headers=push_headers())
                                       for b in bodies))
    assert [r.status for r in responses] == [200] * pushes

    blocks = []  # (push, [indexes]) in log order
    for record in await read_topics(kafka, [bridge.topic]):
        if record.key != work_no.encode():
            continue
        content = orjson.loads(record.value)["content"]
        if blocks and blocks[-1][0] == content["push"]:
            blocks[-1][1].append(content["index"])
        else:
            blocks.append((content["push"], [content["index"]]))
    assert sorted(p for p, _ in blocks) == list(range(pushes)), "a push's events are split by another push"
    assert all(indexes == list(range(events_per_push)) for _, indexes in blocks)
