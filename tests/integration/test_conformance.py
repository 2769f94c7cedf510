"""The push contract against a real bridge process over HTTPS and a real broker over mutual TLS."""
from __future__ import annotations

import orjson
import pytest
from conftest import GUID, TOKEN, bridge_env, headers_of, push_headers, read_topics

from tests.support import BridgeProcess, free_port

pytestmark = pytest.mark.integration

SUCCESS = b'{"message":"success","retcode":"0"}'

# A push shaped like the vendor's example, with realistic values filled in.
VENDOR_PUSH = {
    "workNo": "10086",
    "eventList": [
        {"eventType": "AgentOther_PhoneAlerting", "workNo": "10086", "content": None},
        {"eventType": "AgentEvent_Ringing", "workNo": "10086", "content": {
            "caller": "13800000001", "transfer": "", "callid": "1456403549-15", "transfrom": "",
            "called": "95555", "type": "0", "mediaType": "5", "mediaAbility": "1", "feature": "0"}},
        {"eventType": "AgentEvent_Talking", "workNo": "10086", "content": {
            "caller": "13800000001", "callid": "1456403549-15", "called": "95555", "feature": "0",
            "type": "0", "mediaAbility": "1"}},
    ],
}


async def test_vendor_example_is_accepted_and_published(client, bridge, kafka, topic):
    response = await client.post(bridge.url, orjson.dumps(VENDOR_PUSH), headers=push_headers())
    assert response.status == 200
    assert response.headers["content-type"] == "application/json; charset=UTF-8"
    assert response.body == SUCCESS

    records = [r for r in await read_topics(kafka, [topic]) if r.key == b"10086"]
    assert [orjson.loads(r.value) for r in records] == VENDOR_PUSH["eventList"]
    headers = [headers_of(r) for r in records]
    assert [h["ce_type"] for h in headers] == [e["eventType"] for e in VENDOR_PUSH["eventList"]]
    assert [h["ce_pushindex"] for h in headers] == ["0", "1", "2"]
    first = headers[0]
    assert first["ce_specversion"] == "1.0"
    assert first["ce_source"] == "/cc-gateway/AgentGateway1"
    assert first["ce_subject"] == "10086"
    assert first["content-type"] == "application/json"
    assert first["ce_pushsize"] == "3"
    assert len({h["ce_pushid"] for h in headers}) == 1
    assert len({h["ce_id"] for h in headers}) == 3
    # The Guid is a credential: it must not travel into Kafka.
    assert all(GUID.split(".")[0] not in str(r.headers) + r.value.decode() for r in records)


async def test_retried_push_reproduces_the_same_ce_ids(client, bridge, kafka, topic):
    body = orjson.dumps({"workNo": "20001", "eventList": [
        {"eventType": "AgentState_Ready", "workNo": "20001", "content": None, "eventGenTime": 1795480000001},
        {"eventType": "AgentState_Ready", "workNo": "20001", "content": None, "eventGenTime": 1795480000001},
    ]})
    for _ in range(2):
        assert (await client.post(bridge.url, body, headers=push_headers())).body == SUCCESS
    ids = [headers_of(r)["ce_id"] for r in await read_topics(kafka, [topic]) if r.key == b"20001"]
    assert len(ids) == 4
    assert ids[:2] == ids[2:], "a retry must carry the ids of the first attempt"
    assert ids[0] != ids[1], "identical events within one push still get distinct ids"


FAILURES = [
    # (description, method, headers, body, status, retcode, words in the message)
    ("wrong method", "GET", push_headers(), None, 405, "000-001", "GET"),
    ("missing Guid", "POST", push_headers(Guid=None), VENDOR_PUSH, 401, "000-002", "Guid"),
    ("malformed Guid", "POST", push_headers(Guid="not-a-guid"), VENDOR_PUSH, 401, "000-002", "Guid"),
    ("Guid with a bad node name", "POST", push_headers(Guid="279fe21d-1b2c-4d3e-9f00-aabbccddeeff.A/B"),
     VENDOR_PUSH, 401, "000-002", "Guid"),
    ("token too long", "POST", push_headers(service_token="x" * 51), VENDOR_PUSH, 400, "100-001", "service_token"),
    ("token with special characters", "POST", push_headers(service_token="abc$def"), VENDOR_PUSH, 400,
     "100-001", "service_token"),
    ("missing token", "POST", push_headers(service_token=None), VENDOR_PUSH, 403, "000-003", "service_token"),
    ("unknown token", "POST", push_headers(service_token="wrong-token"), VENDOR_PUSH, 403, "000-003",
     "service_token"),
    ("not JSON", "POST", push_headers(), b"{workNo: 1", 400, "000-006", "JSON"),
    ("not UTF-8", "POST", push_headers(), b'{"workNo": "\xff"}', 400, "000-006", "JSON"),
    ("empty body", "POST", push_headers(), b"", 400, "000-006", "empty"),
    ("array body", "POST", push_headers(), [1, 2], 400, "000-006", "object"),
    ("missing workNo", "POST", push_headers(), {"eventList": VENDOR_PUSH["eventList"]}, 400, "000-006", "workNo"),
    ("boolean workNo", "POST", push_headers(), {"workNo": True, "eventList": VENDOR_PUSH["eventList"]}, 400,
     "000-006", "workNo"),
    ("missing eventList", "POST", push_headers(), {"workNo": "1"}, 400, "000-006", "eventList"),
    ("empty eventList", "POST", push_headers(), {"workNo": "1", "eventList": []}, 400, "000-006", "empty"),
    ("event not an object", "POST", push_headers(), {"workNo": "1", "eventList": [{"eventType": "A"}, 3]}, 400,
     "000-006", "eventList[1]"),
    ("event without eventType", "POST", push_headers(), {"workNo": "1", "eventList": [{"content": None}]}, 400,
     "000-006", "eventList[0].eventType"),
    ("wrong content type", "POST", push_headers(**{"Content-Type": "text/plain"}), VENDOR_PUSH, 415, "000-006",
     "Content-Type"),
    ("body too large", "POST", push_headers(), {"workNo": "1", "eventList": [
        {"eventType": "A", "content": "x" * 70_000}]}, 413, "000-006", "larger than"),
    ("too many events", "POST", push_headers(), {"workNo": "1", "eventList": [{"eventType": "A"}] * 51}, 413,
     "000-006", "limit"),
]


@pytest.fixture(scope="module")
def strict_bridge(kafka, tls_dir, tmp_path_factory):
    """A bridge with small limits, strict refusals and a topic of its own, so "nothing was written" can be
    checked."""
    topic = "test.refusals"
    process = BridgeProcess(bridge_env(kafka, topic, BRIDGE_MAX_BODY_BYTES="65536", BRIDGE_MAX_EVENTS_PER_PUSH="50",
                                BRIDGE_MALFORMED_PUSHES="refuse"),
                     tls_dir).start(tmp_path_factory.mktemp("logs"))
    process.topic = topic
    yield process
    process.stop()


@pytest.mark.parametrize("case", FAILURES, ids=[case[0] for case in FAILURES])
async def test_failure_classes(client, strict_bridge, case):
    _, method, headers, body, status, retcode, words = case
    content = body if isinstance(body, (bytes, type(None))) else orjson.dumps(body)
    response = await client.request(method, strict_bridge.url, content, headers)
    assert response.status == status
    assert response.headers["content-type"] == "application/json; charset=UTF-8"
    answer = orjson.loads(response.body)
    assert set(answer) == {"message", "retcode"}
    assert answer["retcode"] == retcode
    assert words in answer["message"]
    assert "Traceback" not in answer["message"]
    assert TOKEN not in answer["message"]


async def test_unknown_path_answers_json_404(client, strict_bridge):
    response = await client.post(strict_bridge.url.replace("pushresult", "other"), b"{}")
    assert response.status == 404
    assert orjson.loads(response.body)["retcode"] == "000-002"


async def test_second_configured_token_is_accepted(client, strict_bridge):
    response = await client.post(strict_bridge.url, orjson.dumps(VENDOR_PUSH),
                                 headers=push_headers(service_token="second-token"))
    assert response.body == SUCCESS


async def test_refused_pushes_write_nothing(client, strict_bridge, kafka):
    before = len(await read_topics(kafka, [strict_bridge.topic]))
    for _, method, headers, body, *_ in FAILURES:
        content = body if isinstance(body, (bytes, type(None))) else orjson.dumps(body)
        response = await client.request(method, strict_bridge.url, content, headers)
        assert response.status >= 400
    assert len(await read_topics(kafka, [strict_bridge.topic])) == before
    # Control: the same reader does see an accepted push.
    ok = await client.post(strict_bridge.url, orjson.dumps(VENDOR_PUSH), headers=push_headers())
    assert ok.body == SUCCESS
    assert len(await read_topics(kafka, [strict_bridge.topic])) == before + 3


async def test_kafka_unreachable_answers_503_with_retry_after(client, tls_dir, kafka, tmp_path):
    env = bridge_env(kafka, "test.unreachable", BRIDGE_KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}",
                     BRIDGE_CREATE_TOPICS="false")
    process = BridgeProcess(env, tls_dir).start(tmp_path, ready=False)
    try:
        response = await client.post(process.url, orjson.dumps(VENDOR_PUSH), headers=push_headers())
        assert response.status == 503
        assert response.headers["retry-after"].isdigit()
        answer = orjson.loads(response.body)
        assert answer["retcode"] == "100-007" and answer["message"].startswith("Kafka is not reachable")
    finally:
        await process.astop()
