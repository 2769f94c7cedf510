"""The benchmark's Go reference receiver (bench/goref) keeps the bridge's contract on the hot path.

Its CPU per push is only a fair floor for the bridge's if it does the same work: the same checks
answered with the same status and retcode, and the same records (partition, key, value, headers)
for the same pushes. Both write to one topic here; the records of each are told apart by the
process part of their push id, and compared without the two headers that differ by nature
(ce_time, the moment of receipt, and ce_pushid).
"""
from __future__ import annotations

import shutil

import orjson
import pytest
from conftest import bridge_env, push_headers, read_topics

from bench.processes import GoReceiver, go_binary
from bench.runs import GOREF_SRC
from tests.support import BridgeProcess

pytestmark = pytest.mark.integration

PUSHES = [
    {"workNo": "74001", "eventList": [
        {"eventType": "AgentState_Ready", "workNo": "74001", "content": None, "eventGenTime": 1763900000000},
        {"eventType": "AgentState_Ready", "workNo": "74001", "content": None, "eventGenTime": 1763900000000},
        {"eventType": "AgentEvent_Ringing", "workNo": "", "content": {"caller": "1380000", "list": [1, "2", None]}},
        {"eventType": "AgentEvent_Talking", "workNo": 74002, "content": "1456403549-15", "名字": "座席"}]},
    {"workNo": 74003, "eventList": [{"eventType": "AgentOther_PhoneAlerting", "content": {}}]},
]
REFUSED = [  # (what is wrong, extra headers, body)
    ("empty eventList", {}, orjson.dumps({"workNo": "74004", "eventList": []})),
    ("eventType missing", {}, orjson.dumps({"workNo": "74004", "eventList": [{"content": None}]})),
    ("workNo missing", {}, orjson.dumps({"eventList": [{"eventType": "A"}]})),
    ("not JSON", {}, b'{"workNo": "74004", "eventList": ['),
    ("unknown token", {"service_token": "not-this-one"}, orjson.dumps(PUSHES[1])),
    ("malformed Guid", {"Guid": "not-a-guid"}, orjson.dumps(PUSHES[1])),
    ("text/plain", {"Content-Type": "text/plain"}, orjson.dumps(PUSHES[1])),
    ("too large", {}, orjson.dumps({"workNo": "74004", "eventList": [{"eventType": "A", "content": "x" * 70_000}]})),
]


@pytest.fixture(scope="module")
def goref_binary():
    if shutil.which("go") is None:
        pytest.skip("the Go toolchain is not installed")
    return go_binary(GOREF_SRC)


async def send_all(client, url: str) -> list[tuple[int, str]]:
    answers = []
    for body in PUSHES:
        reply = await client.post(url, orjson.dumps(body), push_headers())
        assert reply.status == 200, reply.text
    for _, headers, body in REFUSED:
        reply = await client.post(url, body, push_headers(**headers))
        answers.append((reply.status, orjson.loads(reply.body)["retcode"]))
    return answers


def comparable(records: list) -> list:
    return sorted((r.partition, r.key, r.value, [(k, v) for k, v in r.headers if k not in ("ce_time", "ce_pushid")])
                  for r in records)


async def test_goref_writes_what_the_bridge_writes(goref_binary, kafka, tls_dir, topic, tmp_path, client):
    env = bridge_env(kafka, topic, BRIDGE_REPLICA_NAME="replica-1", BRIDGE_MALFORMED_PUSHES="refuse",
                     BRIDGE_MAX_BODY_BYTES="65536")
    bridge = BridgeProcess(env, tls_dir).start(tmp_path)
    try:
        bridge_answers = await send_all(client, bridge.url)
    finally:
        bridge.stop()
    running: list = []
    with GoReceiver(goref_binary, {**env, "BRIDGE_TLS_CERTFILE": str(tls_dir / "server.pem"),
                                   "BRIDGE_TLS_KEYFILE": str(tls_dir / "server.key")}, tmp_path, running) as goref:
        goref_answers = await send_all(client, goref.urls[0])

    for (what, _, _), ours, theirs in zip(REFUSED, bridge_answers, goref_answers, strict=True):
        assert theirs == ours, what
    by_process: dict[bytes, list] = {}
    for record in await read_topics(kafka, [topic]):
        by_process.setdefault(dict(record.headers)["ce_pushid"].split(b"-")[0], []).append(record)
    assert len(by_process) == 2
    first, second = by_process.values()
    assert len(first) == sum(len(p["eventList"]) for p in PUSHES)
    assert comparable(first) == comparable(second)
