"""The publisher against the real broker, under adversarial scheduling."""
from __future__ import annotations

import asyncio

import orjson
import pytest
from conftest import read_topics

from bridge import config
from bridge.protocol import parse_push
from bridge.publisher import Publisher
from bridge.records import Router, build_records

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("atomic", [False, True], ids=["idempotent", "atomic"])
async def test_pushes_of_one_agent_stay_whole_even_when_every_append_yields(kafka, atomic):
    topic = f"test.adversarial.{atomic}"
    settings = config.load({**kafka.bridge_env(), "BRIDGE_TOPIC": topic, "BRIDGE_CREATE_TOPICS": "true",
                            "BRIDGE_INSECURE_HTTP": "true", "BRIDGE_ALLOW_NO_TOKEN": "true",
                            "BRIDGE_DEAD_LETTER_TOPIC": "off", "BRIDGE_ATOMIC_PUSHES": str(atomic).lower(),
                            "BRIDGE_TRANSACTIONAL_ID": f"adversarial-{atomic}"})
    publisher = Publisher(settings)
    await publisher.start()
    assert publisher.ready
    real_send = publisher._supervisor.producer.send

    async def yielding_send(*args, **kwargs):
        # Hand control to the other pushes before every append, as a metadata refresh or a full
        # batch would: only the per-agent lock can keep a push's events together now.
        await asyncio.sleep(0)
        return await real_send(*args, **kwargs)

    publisher._supervisor.producer.send = yielding_send
    router = Router(topic, ())
    pushes = [build_records(parse_push(orjson.dumps({"workNo": "55", "eventList": [
        {"eventType": "AgentState_Ready", "content": {"push": p, "index": i}} for i in range(8)]}), 100), "", router)
        for p in range(20)]
    try:
        await asyncio.gather(*(publisher.publish(records) for records in pushes))
    finally:
        await publisher.stop()

    blocks: list[tuple[int, list[int]]] = []
    for record in await read_topics(kafka, [topic]):
        content = orjson.loads(record.value)["content"]
        if blocks and blocks[-1][0] == content["push"]:
            blocks[-1][1].append(content["index"])
        else:
            blocks.append((content["push"], [content["index"]]))
    assert [p for p, _ in blocks] == list(range(20)), "pushes interleaved or reordered"
    assert all(indexes == list(range(8)) for _, indexes in blocks)
