import orjson
import pytest

from bridge import protocol
from bridge.protocol import Refusal, parse_push


def refusal(body, max_events=100) -> Refusal:
    with pytest.raises(Refusal) as caught:
        parse_push(body if isinstance(body, bytes) else orjson.dumps(body), max_events)
    return caught.value


def test_success_body_is_exact():
    assert protocol.SUCCESS_BODY == b'{"message":"success","retcode":"0"}'
    assert orjson.loads(protocol.SUCCESS_BODY) == {"message": "success", "retcode": "0"}


def test_parse_keeps_events_and_resolves_each_events_agent():
    push = parse_push(orjson.dumps({"workNo": 1001, "eventList": [
        {"eventType": "A"}, {"eventType": "B", "workNo": "2002"}, {"eventType": "C", "workNo": None},
        {"eventType": "D", "workNo": ""}, {"eventType": "E", "workNo": 3003}]}), 10)
    assert push.work_no == "1001"
    assert push.agents == ["1001", "2002", "1001", "1001", "3003"]
    assert [e["eventType"] for e in push.events] == ["A", "B", "C", "D", "E"]


@pytest.mark.parametrize("body, status, words", [
    (b"", 400, "empty"),
    (b"{", 400, "not valid JSON"),
    (b"[]", 400, "JSON object"),
    ({"eventList": [{"eventType": "A"}]}, 400, "workNo is missing"),
    ({"workNo": "", "eventList": [{"eventType": "A"}]}, 400, "workNo must be"),
    ({"workNo": 1.5, "eventList": [{"eventType": "A"}]}, 400, "workNo must be"),
    ({"workNo": "1"}, 400, "eventList is missing"),
    ({"workNo": "1", "eventList": {}}, 400, "eventList must be an array"),
    ({"workNo": "1", "eventList": []}, 400, "eventList is empty"),
    ({"workNo": "1", "eventList": [{"eventType": "A"}] * 101}, 413, "limit is 100"),
])
def test_refusals_name_the_problem(body, status, words):
    caught = refusal(body)
    assert caught.status == status and caught.retcode == protocol.BAD_MESSAGE
    assert words in caught.message


@pytest.mark.parametrize("events, problem", [
    (["x"], "eventList[0] must be an object"),
    ([{"eventType": 5}], "eventList[0].eventType"),
    ([{}], "eventList[0].eventType"),
    ([{"eventType": "A", "workNo": False}], "eventList[0].workNo"),
])
def test_a_malformed_event_is_left_out_and_named(events, problem):
    good = {"eventType": "Ready", "workNo": "7"}
    push = parse_push(orjson.dumps({"workNo": "1", "eventList": [good, *events, good]}), 10)
    assert push.events == [good, good] and push.agents == ["7", "7"]
    assert push.indexes == [0, 2] and push.size == 3
    assert len(push.problems) == 1 and problem.replace("[0]", "[1]") in push.problems[0]


def test_a_valid_push_has_no_problems():
    push = parse_push(orjson.dumps({"workNo": "1", "eventList": [{"eventType": "A"}, {"eventType": "B"}]}), 10)
    assert push.problems == [] and push.indexes == [0, 1] and push.size == 2


@pytest.mark.parametrize("value", [None, "application/json", "application/json; charset=UTF-8",
                                   "Application/JSON;charset=utf-8", "application/vnd.x+json"])
def test_json_content_types_pass(value):
    protocol.check_content_type(value)


@pytest.mark.parametrize("value", ["text/plain", "application/x-www-form-urlencoded",
                                   "application/json; charset=GBK"])
def test_other_content_types_are_refused(value):
    with pytest.raises(Refusal) as caught:
        protocol.check_content_type(value)
    assert caught.value.status == 415


def test_unavailable_carries_retry_after():
    caught = protocol.unavailable("Kafka is not reachable", "kafka")
    assert caught.status == 503 and caught.retcode == "100-007" and caught.reason == "kafka"
    assert dict(caught.headers)[b"retry-after"] == b"10"


def parse_one(event: dict) -> protocol.Push:
    return parse_push(orjson.dumps({"workNo": "1", "eventList": [event, {"eventType": "Next"}]}), 10)


@pytest.mark.parametrize("sent, written", [
    (1763900000002, 1763900000002),          # the documented form, kept
    (0, 0),
    (protocol.MAX_EVENT_TIME, protocol.MAX_EVENT_TIME),
    ("1763900000002", 1763900000002),        # decimal text
    ("01763900000002", 1763900000002),
    ("0", 0),
    (1763900000002.0, 1763900000002),        # a whole number written as a float
    (1.763900000002e12, 1763900000002),
])
def test_event_gen_time_is_written_as_an_integer(sent, written):
    push = parse_one({"eventType": "A", "eventGenTime": sent})
    assert push.problems == [] and push.events[0]["eventGenTime"] == written
    assert type(push.events[0]["eventGenTime"]) is int
    assert push.normalized == ({} if type(sent) is int else {0: {"eventGenTime": sent}})


@pytest.mark.parametrize("sent", [None, ""])
def test_no_event_gen_time_is_no_field(sent):
    push = parse_one({"eventType": "A", "eventGenTime": sent, "content": None})
    assert push.events[0] == {"eventType": "A", "content": None}
    assert push.normalized == {0: {"eventGenTime": sent}}


@pytest.mark.parametrize("sent", [
    -1, protocol.MAX_EVENT_TIME + 1, 2**64 - 1, 1e20, 1763900000002.5, -0.5, True, False, [1], {"ms": 1},
    "123456789012345", " 1763900000002", "1763900000002 ", "+1763900000002", "-1", "1e12", "1763900000002.0",
    "\u0661\u0662", "1_000", "soon",
])
def test_anything_else_as_event_gen_time_makes_the_event_malformed(sent):
    push = parse_one({"eventType": "A", "eventGenTime": sent})
    assert [e["eventType"] for e in push.events] == ["Next"] and push.indexes == [1]
    assert push.problems == ["eventList[0].eventGenTime must be epoch milliseconds: an integer from 0 to "
                             "99999999999999, or its decimal text"]
    assert push.normalized == {}


def nest(depth: int) -> object:
    value: object = None
    for _ in range(depth):
        value = [value]
    return value


def test_events_nested_too_deeply_are_malformed():
    limit = protocol.MAX_EVENT_DEPTH
    fits = parse_one({"eventType": "A", "content": nest(limit - 1)})   # the event itself is the first level
    assert fits.problems == [] and len(fits.events) == 2
    deep = parse_one({"eventType": "A", "content": {"x": nest(limit - 1)}})
    assert deep.problems == [f"eventList[0] nests objects and arrays more than {limit} levels deep"]
    assert [e["eventType"] for e in deep.events] == ["Next"]


def test_many_shallow_events_are_not_too_deep_and_one_deep_event_among_them_is():
    shallow = {"eventType": "A", "content": {"a": [1]}}
    push = parse_push(orjson.dumps({"workNo": "1", "eventList": [shallow] * 90}), 100)
    assert push.problems == [] and len(push.events) == 90
    deep = {"eventType": "B", "content": nest(protocol.MAX_EVENT_DEPTH)}
    push = parse_push(orjson.dumps({"workNo": "1", "eventList": [shallow] * 90 + [deep, 7]}), 100)
    assert len(push.events) == 90 and push.indexes == list(range(90))
    assert push.problems[0].startswith("eventList[90] nests") and push.problems[1] == "eventList[91] must be an object"
