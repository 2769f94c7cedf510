"""Operating the real process: management endpoints, logs, dead letters, bounds, Kafka outages,
graceful shutdown."""
from __future__ import annotations

import asyncio
import json
import signal
import time

import orjson
import pytest
from conftest import GUID, bridge_env, headers_of, push_headers, read_topics

from tests.support import BridgeProcess, free_port, load_kafkalocal

pytestmark = pytest.mark.integration

PUSH = orjson.dumps({"workNo": "61001", "eventList": [
    {"eventType": "AgentOther_InService", "workNo": "61001", "content": None, "eventGenTime": 1795480000000},
    {"eventType": "AgentState_Ready", "workNo": "61001", "content": None, "eventGenTime": 1795480000001}]})


async def test_management_endpoints_and_metrics(client, bridge, topic):
    assert (await client.request("GET", bridge.management_url + "/healthz")).status == 200
    ready = await client.request("GET", bridge.management_url + "/readyz")
    assert ready.status == 200
    assert orjson.loads(ready.body) == {"status": "ready", "mode": "direct", "kafka": "usable"}

    assert (await client.post(bridge.url, PUSH, push_headers())).status == 200
    assert (await client.post(bridge.url, PUSH, push_headers(service_token="wrong"))).status == 403
    text = (await client.request("GET", bridge.management_url + "/metrics")).text
    for line in ('bridge_pushes_total{retcode="0"}', 'bridge_pushes_total{retcode="000-003"}',
                 'bridge_pushes_rejected_total{reason="token"}', f'bridge_events_published_total{{topic="{topic}"}}',
                 "bridge_push_duration_seconds_bucket", "bridge_kafka_publish_duration_seconds_count",
                 "bridge_inflight_pushes 0.0", "bridge_kafka_connected 1.0", "bridge_spool_accepting 0.0",
                 'bridge_agents_failing{over="60s"} 0.0'):
        assert line in text, line
    assert "61001" not in text and GUID.split(".")[0] not in text, "no workNo or Guid as a label"

    # The push port exposes the push path only.
    for path in ("/metrics", "/healthz", "/readyz"):
        response = await client.request("GET", bridge.url.split("/service-cloud")[0] + path)
        assert response.status == 404 and orjson.loads(response.body)["retcode"] == "000-002"


async def test_logs_are_json_lines_and_secrets_never_leave(client, kafka, tls_dir, tmp_path):
    token, topic, dead = "S3cret-Token-4711", "test.secrets", "test.secrets.dead"
    env = bridge_env(kafka, topic, BRIDGE_SERVICE_TOKENS=token, BRIDGE_DEAD_LETTER_TOPIC=dead,
                     BRIDGE_LOG_LEVEL="debug")
    process = BridgeProcess(env, tls_dir).start(tmp_path)
    try:
        assert (await client.post(process.url, PUSH, push_headers(service_token=token))).status == 200
        assert (await client.post(process.url, b"{broken", push_headers(service_token=token))).status == 200
        assert (await client.post(process.url, PUSH, push_headers(service_token=token[:-1] + "2"))).status == 403
        assert (await client.post(process.url, PUSH, push_headers(service_token=token + "$"))).status == 400
    finally:
        assert await process.astop() == 0

    lines = [orjson.loads(line) for line in process.log().splitlines() if line.strip()]  # every line is JSON
    pushes = [entry for entry in lines if entry.get("operation") == "pushEvent"]
    assert [p["retcode"] for p in pushes] == ["0", "0", "000-003", "100-001"]
    ok = pushes[0]
    assert ok["workNo"] == "61001" and ok["events"] == 2 and ok["status"] == 200 and ok["duration_ms"] >= 0
    assert ok["guid"] == "279f****.AgentGateway1"
    assert "JSON" in pushes[1]["quarantined"] and pushes[1]["workNo"] is None

    session_part = GUID.split(".")[0]
    assert token not in process.log() and token[:-1] not in process.log() and session_part not in process.log()
    for record in await read_topics(kafka, [topic, dead]):
        everything = record.value + b"".join(k.encode() + v for k, v in record.headers)
        assert token.encode() not in everything and session_part.encode() not in everything


@pytest.mark.parametrize("mode, answers", [("quarantine", [200, 200, 200]), ("refuse", [400, 413, 415])])
async def test_malformed_pushes_are_kept_in_the_dead_letter_topic(client, kafka, tls_dir, tmp_path, mode, answers):
    topic, dead = f"test.dlq.{mode}.events", f"test.dlq.{mode}.dead"
    env = bridge_env(kafka, topic, BRIDGE_DEAD_LETTER_TOPIC=dead, BRIDGE_MAX_BODY_BYTES="4096",
                     BRIDGE_MALFORMED_PUSHES=mode)
    process = BridgeProcess(env, tls_dir).start(tmp_path)
    try:
        broken = b'{"workNo": "1", "eventList": [{"eventType": 42}]}'
        replies = [await client.post(process.url, broken, push_headers()),
                   await client.post(process.url, b"x" * 5000, push_headers()),
                   await client.post(process.url, b"plain", push_headers(**{"Content-Type": "text/plain"}))]
        assert [r.status for r in replies] == answers
        assert all(orjson.loads(r.body)["retcode"] == ("0" if mode == "quarantine" else "000-006") for r in replies)
        # Unauthenticated senders never get anything written.
        assert (await client.post(process.url, b"{unauthenticated", push_headers(service_token="nope"))).status == 403
        assert (await client.post(process.url, b"{no guid", push_headers(Guid=None))).status == 401
        metrics = (await client.request("GET", process.management_url + "/metrics")).text
    finally:
        await process.astop()
    if mode == "quarantine":
        for reason in ("body", "too_large", "content_type"):
            assert f'bridge_quarantined_pushes_total{{reason="{reason}"}} 1.0' in metrics
    kept = sorted(await read_topics(kafka, [dead]), key=lambda r: headers_of(r)["bridge_status"])
    assert [r.value for r in kept] == [broken, b"", b"plain"]
    headers = [headers_of(r) for r in kept]
    assert [h["bridge_status"] for h in headers] == ["400", "413", "415"]
    assert [h["bridge_retcode"] for h in headers] == ["000-006"] * 3
    assert {h["ce_type"] for h in headers} == {"cc.bridge.quarantined_push"}
    assert "eventList[0].eventType" in headers[0]["bridge_reason"]
    assert headers[1]["bridge_body_length"] == "5000"
    assert all(h["ce_source"] == "/cc-gateway/AgentGateway1" for h in headers)
    assert await read_topics(kafka, [topic]) == []


async def test_a_push_with_some_bad_events_publishes_the_good_ones_and_keeps_it_whole(client, kafka, tls_dir,
                                                                                    tmp_path):
    topic, dead = "test.partial.events", "test.partial.dead"
    process = BridgeProcess(bridge_env(kafka, topic, BRIDGE_DEAD_LETTER_TOPIC=dead), tls_dir).start(tmp_path)
    body = orjson.dumps({"workNo": "5150", "eventList": [
        {"eventType": "AgentState_Ready", "content": None}, "not an event", {"content": "no type"},
        {"eventType": "AgentState_Busy", "content": {"n": 1}}]})
    try:
        reply = await client.post(process.url, body, push_headers())
        assert reply.status == 200 and orjson.loads(reply.body)["retcode"] == "0"
    finally:
        await process.astop()
    good = await read_topics(kafka, [topic])
    assert [orjson.loads(r.value)["eventType"] for r in good] == ["AgentState_Ready", "AgentState_Busy"]
    assert [headers_of(r)["ce_pushindex"] for r in good] == ["0", "3"]
    assert {headers_of(r)["ce_pushsize"] for r in good} == {"4"}
    [kept] = await read_topics(kafka, [dead])
    assert kept.value == body
    reason = headers_of(kept)["bridge_reason"]
    assert "eventList[1] must be an object" in reason and "eventList[2].eventType" in reason


async def test_the_header_limit_answers_at_once(client, kafka, tls_dir, tmp_path):
    """(The in-flight bound, which slow bodies no longer fill, is tested in test_slow_connections.)"""
    process = BridgeProcess(bridge_env(kafka, "test.limits", BRIDGE_MAX_HEADER_BYTES="4096"), tls_dir).start(tmp_path)
    try:
        assert (await client.post(process.url, PUSH, push_headers())).status == 200
        response = await client.post(process.url, PUSH, push_headers(**{"X-Padding": "p" * 5000}))
        assert response.status == 431 and orjson.loads(response.body)["retcode"] == "000-006"
    finally:
        await process.astop()


async def test_kafka_down_at_start_fails_fast_then_recovers_without_restart(client, tls_dir, tmp_path):
    kafkalocal = load_kafkalocal()
    home, port, ssl_port, cport = tmp_path / "late-kafka", free_port(), free_port(), free_port()
    env = {"BRIDGE_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{ssl_port}", "BRIDGE_KAFKA_SECURITY_PROTOCOL": "SSL",
           "BRIDGE_KAFKA_SSL_CAFILE": str(tls_dir / "ca.pem"), "BRIDGE_KAFKA_SSL_CERTFILE": str(tls_dir / "server.pem"),
           "BRIDGE_KAFKA_SSL_KEYFILE": str(tls_dir / "server.key"), "BRIDGE_TOPIC": "test.late",
           "BRIDGE_SERVICE_TOKENS": "Tok3n-for_tests", "BRIDGE_CREATE_TOPICS": "true"}
    process = BridgeProcess(env, tls_dir).start(tmp_path, ready=False)
    try:
        started = time.monotonic()
        response = await client.post(process.url, PUSH, push_headers())
        assert response.status == 503 and response.headers["retry-after"].isdigit()
        assert orjson.loads(response.body)["retcode"] == "100-007"
        assert time.monotonic() - started < 1.0, "known-down Kafka must not cost the publish bound"
        assert (await client.request("GET", process.management_url + "/readyz")).status == 503
        assert (await client.request("GET", process.management_url + "/healthz")).status == 200

        await asyncio.to_thread(kafkalocal.start, home, port, ssl_port, cport, tls_dir)
        returned = time.monotonic()
        deadline = returned + 60
        while (await client.post(process.url, PUSH, push_headers())).status != 200:
            assert time.monotonic() < deadline, "the bridge did not recover on its own"
            await asyncio.sleep(0.5)
        print(f"recovered {time.monotonic() - returned:.1f} s after the broker accepted connections")
        # /readyz answers the verdict decided every 0.25 s (bridge/membership.py): it may say 503 for
        # that long after the first push went straight through.
        ready_by = time.monotonic() + 2
        while (await client.request("GET", process.management_url + "/readyz")).status != 200:
            assert time.monotonic() < ready_by, "/readyz did not follow Kafka's return within 2 s"
            await asyncio.sleep(0.1)
    finally:
        await process.astop()
        await asyncio.to_thread(kafkalocal.stop, home)


async def test_sigterm_drains_in_flight_pushes_and_exits_zero(client, kafka, tls_dir, tmp_path):
    topic = "test.sigterm"
    process = BridgeProcess(bridge_env(kafka, topic, BRIDGE_SHUTDOWN_TIMEOUT_S="10"), tls_dir).start(tmp_path)
    acknowledged: list[int] = []

    async def agent(n: int) -> None:
        for p in range(200):
            body = orjson.dumps({"workNo": f"7{n:04d}", "eventList": [
                {"eventType": "AgentState_Ready", "content": {"n": n, "p": p, "i": i}} for i in range(3)]})
            try:
                response = await client.post(process.url, body, push_headers())
            except Exception:  # connection closed by the stopping server: not acknowledged
                return
            if response.status != 200:
                return
            acknowledged.extend((n, p, i) for i in range(3))

    load = asyncio.gather(*(agent(n) for n in range(20)))
    await asyncio.sleep(1.5)
    process.proc.send_signal(signal.SIGTERM)
    stopped = time.monotonic()
    await load
    code = await asyncio.to_thread(process.proc.wait, 30)
    assert code == 0, process.log()
    assert time.monotonic() - stopped < 10 + 5 + 3
    assert acknowledged, "the load did not run before the signal"
    found = {tuple(orjson.loads(r.value)["content"][k] for k in "npi") for r in await read_topics(kafka, [topic])}
    assert set(acknowledged) <= found, "an acknowledged event is missing after shutdown"
    lines = [json.loads(line) for line in process.log().splitlines() if line.strip()]
    assert any("Shutting down" in entry["message"] for entry in lines)
