from datetime import UTC, datetime

import orjson

from bridge.config import Route
from bridge.protocol import parse_push
from bridge.records import Router, build_records, new_push_id, rfc3339

WHEN = datetime(2026, 11, 24, 8, 30, 1, 234000, tzinfo=UTC).timestamp()


def records_for(body: dict, node: str = "AgentGateway1", router: Router | None = None):
    push = parse_push(orjson.dumps(body), 100)
    return build_records(push, node, router or Router("events", ()), WHEN, "p1")


def test_one_record_per_event_in_order_with_headers():
    body = {"workNo": "1001", "eventList": [
        {"eventType": "AgentState_Ready", "workNo": "1001", "content": None},
        {"eventType": "AgentEvent_Ringing", "content": {"callid": "1-2"}, "extra": 1}]}
    records = records_for(body)
    assert [orjson.loads(r.value) for r in records] == body["eventList"]
    assert [r.key for r in records] == [b"1001", b"1001"]
    assert [r.topic for r in records] == ["events", "events"]
    headers = dict(records[1].headers)
    assert headers["ce_specversion"] == b"1.0"
    assert headers["ce_type"] == b"AgentEvent_Ringing"
    assert headers["ce_subject"] == b"1001"
    assert headers["ce_source"] == b"/cc-gateway/AgentGateway1"
    assert headers["ce_time"] == b"2026-11-24T08:30:01.234Z"
    assert headers["content-type"] == b"application/json"
    assert (headers["ce_pushid"], headers["ce_pushindex"], headers["ce_pushsize"]) == (b"p1", b"1", b"2")


def test_event_workno_wins_and_numbers_become_text():
    records = records_for({"workNo": 7, "eventList": [{"eventType": "A"}, {"eventType": "B", "workNo": 8}]})
    assert [r.key for r in records] == [b"7", b"8"]


def test_ce_id_is_deterministic_and_distinct_for_repeats():
    body = {"workNo": "1", "eventList": [{"eventType": "A", "content": None}] * 3 + [{"eventType": "B"}]}
    first = [dict(r.headers)["ce_id"] for r in records_for(body)]
    again = [dict(r.headers)["ce_id"] for r in records_for(body, node="OtherNode")]
    assert first == again
    assert len(set(first)) == 4
    assert first[1] == first[0] + b"-1" and first[2] == first[0] + b"-2"


def test_ce_id_changes_with_any_field():
    base = {"workNo": "1", "eventList": [{"eventType": "A", "content": {"x": 1}, "eventGenTime": 5}]}
    changed = {"workNo": "1", "eventList": [{"eventType": "A", "content": {"x": 1}, "eventGenTime": 6}]}
    other_agent = {"workNo": "2", "eventList": base["eventList"]}
    ids = {dict(records_for(b)[0].headers)["ce_id"] for b in (base, changed, other_agent)}
    assert len(ids) == 3


def test_router_first_match_wins_and_default_applies():
    router = Router("all", (Route("AgentChat_*", "chat"), Route("Agent*", "agent"), Route("QC_?gent*", "qc")))
    assert router.topic_for("AgentChat_Ring") == "chat"
    assert router.topic_for("AgentState_Ready") == "agent"
    assert router.topic_for("QC_AgentState_Notify") == "qc"
    assert router.topic_for("Unknown") == "all"
    assert router.topic_for("agentchat_ring") == "all", "patterns are case-sensitive, like eventType"


def test_receipt_time_and_push_ids():
    assert rfc3339(WHEN) == b"2026-11-24T08:30:01.234Z"
    assert rfc3339(WHEN + 0.5) == b"2026-11-24T08:30:01.734Z"
    assert rfc3339(WHEN + 60.001) == b"2026-11-24T08:31:01.235Z"
    assert new_push_id() != new_push_id()


def test_source_without_node():
    assert dict(records_for({"workNo": "1", "eventList": [{"eventType": "A"}]}, node="")[0].headers)["ce_source"] == b"/cc-gateway"


def test_a_normalised_event_says_what_was_sent():
    records = records_for({"workNo": "1", "eventList": [
        {"eventType": "A", "eventGenTime": "1763900000002"}, {"eventType": "B", "eventGenTime": 1763900000003},
        {"eventType": "C", "eventGenTime": None}]})
    assert [orjson.loads(r.value) for r in records] == [
        {"eventType": "A", "eventGenTime": 1763900000002}, {"eventType": "B", "eventGenTime": 1763900000003},
        {"eventType": "C"}]
    assert [dict(r.headers).get("bridge_normalized") for r in records] == [
        b'{"eventGenTime":"1763900000002"}', None, b'{"eventGenTime":null}']


def test_ce_id_is_that_of_the_normalised_event():
    as_text = records_for({"workNo": "1", "eventList": [{"eventType": "A", "eventGenTime": "1763900000002"}]})
    as_number = records_for({"workNo": "1", "eventList": [{"eventType": "A", "eventGenTime": 1763900000002}]})
    assert as_text[0].value == as_number[0].value
    assert dict(as_text[0].headers)["ce_id"] == dict(as_number[0].headers)["ce_id"]
