"""The push endpoint in-process, with a stand-in delivery: every stage's outcome (answer, what is
kept, metrics) without sockets or Kafka. What Kafka does with the records is the integration
tests' business; here the delivery only records what it was given, or fails as told."""
from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
import pytest

from bridge import config
from bridge.auth import Authenticator
from bridge.delivery import Unavailable
from bridge.logs import LineBudget
from bridge.metrics import Metrics
from bridge.push import PushEndpoint
from bridge.records import Record
from bridge.risk import AgentRisk

TOKEN = "tok-1"
GUID = "279fe21d-1b2c-4d3e-9f00-aabbccddeeff.node7"
PATH = "/push"
DEAD = "dead.letters"


class StandInDelivery:
    def __init__(self, fail: BaseException | None = None, spooled: bool = False) -> None:
        self.kept: list[list[Record]] = []
        self.fail, self.spooled = fail, spooled
        self.gate: asyncio.Event | None = None

    async def keep(self, records: list[Record]) -> bool:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        self.kept.append(records)
        return self.spooled


def endpoint(delivery: StandInDelivery, auth: Authenticator | None = None, leaving: bool = False,
             **env: str) -> tuple[PushEndpoint, Metrics, AgentRisk]:
    settings = config.load({"BRIDGE_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "BRIDGE_INSECURE_HTTP": "true",
                            "BRIDGE_SERVICE_TOKENS": TOKEN, "BRIDGE_PUSH_PATH": PATH,
                            "BRIDGE_DEAD_LETTER_TOPIC": DEAD, **{f"BRIDGE_{k}": v for k, v in env.items()}})
    metrics, risk = Metrics(), AgentRisk()
    return PushEndpoint(settings, delivery, metrics, risk, auth, leaving=lambda: leaving), metrics, risk


async def call(app: PushEndpoint, body: bytes | list[bytes] | None, method: str = "POST",
               **headers: str) -> tuple[int | None, dict[str, str], dict[str, Any] | None]:
    """Run one request through the app: (status, headers, JSON body); (None, {}, None) if no answer."""
    sent = {"Content-Type": "application/json", "Guid": GUID, "service_token": TOKEN, **headers}
    chunks = [body] if isinstance(body, bytes) else (body or [])
    scope = {"type": "http", "method": method, "path": PATH,
             "headers": [(k.lower().encode(), v.encode()) for k, v in sent.items()]}
    messages: list[dict[str, Any]] = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
                                      for i, c in enumerate(chunks)]
    if body is None:
        messages = [{"type": "http.disconnect"}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    out: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        out.append(message)

    await app(scope, receive, send)
    if not out:
        return None, {}, None
    head = {k.decode(): v.decode() for k, v in out[0]["headers"]}
    return out[0]["status"], head, orjson.loads(out[1]["body"])


def push(*events: Any, work_no: Any = "1001") -> bytes:
    return orjson.dumps({"workNo": work_no, "eventList": list(events)})


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_a_valid_push_is_kept_in_order_and_answered_success():
    delivery = StandInDelivery()
    app, metrics, _ = endpoint(delivery)
    status, headers, body = await call(app, push({"eventType": "A", "n": 1}, {"eventType": "B", "n": 2}))
    assert (status, body) == (200, {"message": "success", "retcode": "0"})
    assert headers["content-type"] == "application/json; charset=UTF-8"
    [records] = delivery.kept
    assert [(r.key, orjson.loads(r.value)["n"]) for r in records] == [(b"1001", 1), (b"1001", 2)]
    assert sample(metrics, "bridge_pushes_total", retcode="0") == 1


@pytest.mark.parametrize(("method", "headers", "status", "retcode"), [
    ("GET", {}, 405, "000-001"),
    ("POST", {"Guid": "not-a-guid"}, 401, "000-002"),
    ("POST", {"service_token": "wrong"}, 403, "000-003"),
    ("POST", {"service_token": "bad token!"}, 400, "100-001"),
])
async def test_refusals_before_the_body_keep_nothing(method, headers, status, retcode):
    delivery = StandInDelivery()
    app, metrics, _ = endpoint(delivery)
    got_status, got_headers, body = await call(app, push({"eventType": "A"}), method, **headers)
    assert (got_status, body["retcode"]) == (status, retcode)
    assert delivery.kept == []
    assert sample(metrics, "bridge_pushes_total", retcode=retcode) == 1
    if status == 405:
        assert got_headers["allow"] == "POST"


async def test_a_malformed_push_is_quarantined_and_counted_once_kept():
    delivery = StandInDelivery()
    app, metrics, _ = endpoint(delivery)
    status, _, body = await call(app, b"{not json")
    assert (status, body["retcode"]) == (200, "0")
    [[dead]] = delivery.kept
    assert dead.topic == DEAD and dead.key is None and dead.value == b"{not json"
    assert dict(dead.headers)["bridge_status"] == b"400"
    assert sample(metrics, "bridge_quarantined_pushes_total", reason="body") == 1
    assert sample(metrics, "bridge_dead_letters_total") == 1


async def test_a_quarantined_push_that_cannot_be_kept_is_refused_and_not_counted():
    delivery = StandInDelivery(fail=Unavailable("Kafka is not reachable"))
    app, metrics, _ = endpoint(delivery)
    status, headers, body = await call(app, b"{not json")
    assert (status, body["retcode"], headers["retry-after"]) == (503, "100-007", "10")
    assert sample(metrics, "bridge_quarantined_pushes_total", reason="body") == 0
    assert sample(metrics, "bridge_dead_letters_total") == 0


async def test_well_formed_events_go_on_and_the_push_is_kept_whole_aside():
    delivery = StandInDelivery()
    app, metrics, _ = endpoint(delivery)
    raw = push({"eventType": "A"}, {"eventType": ""}, {"eventType": "C"})
    status, _, _ = await call(app, raw)
    assert status == 200
    [records] = delivery.kept
    assert [r.topic for r in records] == ["cc.agent.events", "cc.agent.events", DEAD]
    assert [dict(r.headers).get("ce_pushindex") for r in records[:2]] == [b"0", b"2"]
    assert records[2].value == raw
    assert sample(metrics, "bridge_quarantined_pushes_total", reason="events") == 1


async def test_strict_mode_refuses_a_malformed_push_and_keeps_a_copy():
    delivery = StandInDelivery()
    app, metrics, risk = endpoint(delivery, MALFORMED_PUSHES="refuse")
    status, _, body = await call(app, push({"eventType": 5}))
    assert (status, body["retcode"]) == (400, "000-006")
    assert "eventList[0].eventType" in body["message"]
    [[dead]] = delivery.kept
    assert dead.topic == DEAD
    assert sample(metrics, "bridge_pushes_rejected_total", reason="body") == 1
    assert len(risk) == 1  # the agent's failing streak has begun


async def test_a_body_over_the_limit_is_quarantined_with_its_length_but_not_read_whole():
    delivery = StandInDelivery()
    app, _, _ = endpoint(delivery, MAX_BODY_BYTES="1024")
    status, _, _ = await call(app, [b"x" * 1000, b"y" * 1000])
    assert status == 200
    [[dead]] = delivery.kept
    assert dead.value == b"" and dict(dead.headers)["bridge_status"] == b"413"


async def test_a_gateway_that_hangs_up_gets_no_answer_and_nothing_is_kept():
    delivery = StandInDelivery()
    app, metrics, _ = endpoint(delivery)
    assert await call(app, None) == (None, {}, None)
    assert delivery.kept == [] and sample(metrics, "bridge_inflight_pushes") == 0


async def test_pushes_over_the_in_flight_bound_are_refused_at_once():
    delivery = StandInDelivery()
    delivery.gate = asyncio.Event()
    app, _, _ = endpoint(delivery, MAX_INFLIGHT_PUSHES="1")
    first = asyncio.create_task(call(app, push({"eventType": "A"})))
    await asyncio.sleep(0.01)
    status, headers, body = await call(app, push({"eventType": "A"}))
    assert (status, headers["retry-after"], body["retcode"]) == (503, "1", "100-007")
    assert "in flight" in body["message"]
    delivery.gate.set()
    assert (await first)[0] == 200


async def test_a_bug_is_answered_without_detail():
    delivery = StandInDelivery(fail=RuntimeError("secret internals"))
    app, _, _ = endpoint(delivery)
    status, _, body = await call(app, push({"eventType": "A"}))
    assert (status, body) == (503, {"message": "internal error", "retcode": "100-007"})


async def test_a_spooled_push_is_answered_success():
    delivery = StandInDelivery(spooled=True)
    app, _, _ = endpoint(delivery)
    assert (await call(app, push({"eventType": "A"})))[0] == 200


async def call_at(app: PushEndpoint, query: bytes, body: bytes, **headers: str) -> int | None:
    """A push with a query string (the per-agent callback URL)."""
    sent = {"Content-Type": "application/json", "Guid": GUID, "service_token": TOKEN, **headers}
    scope = {"type": "http", "method": "POST", "path": PATH, "query_string": query,
             "headers": [(k.lower().encode(), v.encode()) for k, v in sent.items()]}
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    out: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        out.append(message)

    await app(scope, receive, send)
    return out[0]["status"] if out else None


async def test_a_callback_url_naming_another_agent_is_counted_and_the_push_accepted(caplog):
    delivery = StandInDelivery()
    app, metrics, _ = endpoint(delivery)
    assert await call_at(app, b"workNo=1001", push({"eventType": "A"})) == 200
    assert await call_at(app, b"x=1&workNo=10%2001", push({"eventType": "A"}, work_no="10 01")) == 200
    assert sample(metrics, "bridge_url_agent_mismatches_total") == 0
    assert await call_at(app, b"workNo=2002", push({"eventType": "A"})) == 200
    assert sample(metrics, "bridge_url_agent_mismatches_total") == 1
    assert len(delivery.kept) == 3 and delivery.kept[2][0].key == b"1001"  # the body's agent keys the record
    assert any(getattr(r, "fields", {}).get("url_agent") == "2002" for r in caplog.records)


async def test_pushes_the_router_did_not_route_by_their_agent_are_counted():
    delivery = StandInDelivery()
    app, metrics, _ = endpoint(delivery, ROUTER_KEY_HEADER="X-CC-Route-Key")
    assert await call_at(app, b"", push({"eventType": "A"}), **{"x-cc-route-key": "1001"}) == 200
    assert sample(metrics, "bridge_affinity_misses_total", reason="no_key") == 0
    assert await call_at(app, b"", push({"eventType": "A"})) == 200
    assert await call_at(app, b"", push({"eventType": "A"}), **{"x-cc-route-key": "7"}) == 200
    assert sample(metrics, "bridge_affinity_misses_total", reason="no_key") == 1
    assert sample(metrics, "bridge_affinity_misses_total", reason="other_agent") == 1
    assert len(delivery.kept) == 3


async def test_without_a_router_header_setting_nothing_is_checked():
    delivery = StandInDelivery()
    app, metrics, _ = endpoint(delivery)
    assert await call_at(app, b"", push({"eventType": "A"}), **{"x-cc-route-key": "7"}) == 200
    assert sample(metrics, "bridge_affinity_misses_total", reason="other_agent") == 0


async def test_records_and_dead_letters_name_the_replica_that_accepted_them():
    delivery = StandInDelivery()
    app, _, _ = endpoint(delivery, REPLICA_NAME="bridge-2")
    await call(app, push({"eventType": "A"}, {"eventType": ""}))
    [records] = delivery.kept
    assert [dict(r.headers)["bridge_replica"] for r in records] == [b"bridge-2", b"bridge-2"]


# -- what a flood writes to the log --------------------------------------------------------------

def refusal_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "bridge.push" and r.levelno == logging.WARNING]


async def test_refusals_before_authentication_are_counted_in_full_and_logged_at_a_bounded_rate(caplog):
    app, metrics, _ = endpoint(StandInDelivery())
    with caplog.at_level(logging.INFO, "bridge.push"):
        for _ in range(1000):
            status, _, body = await call(app, push({"eventType": "A"}), service_token="wrong")
            assert (status, body["retcode"]) == (403, "000-003")
        for _ in range(300):
            assert (await call(app, push({"eventType": "A"}), Guid="not-a-guid"))[0] == 401
    assert sample(metrics, "bridge_pushes_rejected_total", reason="token") == 1000
    assert sample(metrics, "bridge_pushes_rejected_total", reason="guid") == 300
    lines = refusal_lines(caplog)
    assert [r.fields["retcode"] for r in lines] == ["000-003"] * 5 + ["000-002"] * 5, "five lines per reason"
    assert sample(metrics, "bridge_log_lines_held_back_total", reason="token") == 995
    assert sample(metrics, "bridge_log_lines_held_back_total", reason="guid") == 295


async def test_lines_held_back_are_summed_up_once_the_interval_is_over(caplog):
    app, metrics, _ = endpoint(StandInDelivery())
    app._bounded_line._budget = LineBudget(burst=2, interval_s=0.2)
    with caplog.at_level(logging.INFO, "bridge.push"):
        for _ in range(50):
            await call(app, push({"eventType": "A"}), service_token="wrong")
        await asyncio.sleep(0.4)  # the flood stopped: nothing else would report what was held back
    lines = refusal_lines(caplog)
    assert len(lines) == 3
    assert lines[2].fields == {"operation": "pushEvent", "problem": "token", "held_back": 48, "within_s": 0.2}
    assert "48 more lines like it held back" in lines[2].getMessage()
    assert sample(metrics, "bridge_pushes_rejected_total", reason="token") == 50


async def test_an_authenticated_gateways_refused_or_quarantined_push_is_always_logged(caplog):
    strict, _, _ = endpoint(StandInDelivery(), MALFORMED_PUSHES="refuse")
    quarantining, _, _ = endpoint(StandInDelivery(), PUSH_LOG_LEVEL="debug")  # accepted pushes silenced
    with caplog.at_level(logging.INFO, "bridge.push"):
        for _ in range(30):
            assert (await call(strict, b"{not json"))[0] == 400
            assert (await call(quarantining, b"{not json"))[0] == 200
            assert (await call(quarantining, push({"eventType": "A"})))[0] == 200
    lines = refusal_lines(caplog)
    assert sum(r.getMessage() == "pushEvent refused" and r.fields["status"] == 400 for r in lines) == 30
    assert sum("quarantined" in r.fields for r in lines) == 30
    assert all("held_back" not in r.fields for r in lines)
    assert not [r for r in caplog.records if r.levelno < logging.WARNING], "accepted pushes stay silent"


async def test_the_token_set_can_be_replaced_while_serving():
    auth = Authenticator(("old-token",), allow_no_token=False)
    app, _, _ = endpoint(StandInDelivery(), auth)
    assert (await call(app, push({"eventType": "A"}), service_token="old-token"))[0] == 200
    assert auth.use(("old-token", "new-token")) == "2 tokens accepted (1 added, 0 removed)"
    assert (await call(app, push({"eventType": "A"}), service_token="new-token"))[0] == 200
    assert auth.use(("new-token",)) == "1 token accepted (0 added, 1 removed)"
    assert (await call(app, push({"eventType": "A"}), service_token="old-token"))[0] == 403
    with pytest.raises(ValueError):
        auth.use(())
    assert (await call(app, push({"eventType": "A"}), service_token="new-token"))[0] == 200


async def test_while_the_replica_leaves_every_answer_closes_its_connection():
    app, _, _ = endpoint(StandInDelivery(), leaving=True)
    status, head, body = await call(app, push({"eventType": "AgentState_Ready", "workNo": "1001"}))
    assert status == 200 and body == {"message": "success", "retcode": "0"} and head["connection"] == "close"
    status, head, _ = await call(app, b"{", service_token="wrong")
    assert status == 403 and head["connection"] == "close"
    app, _, _ = endpoint(StandInDelivery())
    _, head, _ = await call(app, push({"eventType": "AgentState_Ready", "workNo": "1001"}))
    assert "connection" not in head, "a replica that stays keeps the connection open"
