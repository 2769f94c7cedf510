"""docs/contracts/openapi.yaml against real bridge processes, in each mode of BRIDGE_MALFORMED_PUSHES
(and openapi-management.yaml against the management port, at the end).

A fixed set of requests (good, unauthenticated, malformed, oversized, other methods and paths,
and a push while Kafka is unreachable) is sent; the answers are not written down here. Instead:
every answer must match the document's response for its method, path and status (body schema,
headers), and the set of (where, status, retcode) answers observed must equal the set the
document lists for that mode: nothing undocumented happens, nothing documented is unreachable.
"""
from __future__ import annotations

from dataclasses import dataclass

import orjson
import pytest
from conftest import Http, bridge_env, push_headers
from contract_docs import OpenApi, malformed_pushes_env
from prometheus_client.parser import text_string_to_metric_families

from tests.support import BridgeProcess, free_port

pytestmark = pytest.mark.integration

GOOD = {"workNo": "75001", "eventList": [
    {"eventType": "AgentOther_PhoneAlerting", "workNo": "75001", "content": None, "eventGenTime": 1763900000000},
    {"eventType": "AgentEvent_Ringing", "workNo": "75001", "eventGenTime": 1763900000850,
     "content": {"caller": "13800000001", "callid": "1456403549-15", "called": "95555", "type": "0"}}]}
LIMITS = {"BRIDGE_MAX_BODY_BYTES": "65536", "BRIDGE_MAX_EVENTS_PER_PUSH": "50", "BRIDGE_MAX_HEADER_BYTES": "4096"}


@dataclass(frozen=True)
class Probe:
    name: str
    body: bytes | None = orjson.dumps(GOOD)
    headers: dict | None = None     # overrides of the gateway's usual headers
    method: str = "POST"
    other_path: bool = False


PROBES = [
    Probe("vendor-shaped push"),
    Probe("older gateway push", orjson.dumps({"workNo": 75002, "eventList": [
        {"eventType": "AgentEvent_Call_Release", "workNo": "", "content": "1456403549-15"},
        {"eventType": "AgentState_Ready", "content": None, "x": [1]}]})),
    Probe("no Content-Type", headers={"Content-Type": None}),
    *[Probe(f"method {m}", method=m) for m in ("GET", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE")],
    Probe("method HEAD", None, method="HEAD"),
    Probe("unknown path", other_path=True),
    Probe("unknown path, GET", method="GET", other_path=True),
    Probe("no Guid", headers={"Guid": None}),
    Probe("malformed Guid", headers={"Guid": "279fe21d"}),
    Probe("token too long", headers={"service_token": "x" * 51}),
    Probe("token with other characters", headers={"service_token": "abc$def"}),
    Probe("no token", headers={"service_token": None}),
    Probe("unknown token", headers={"service_token": "wrong-token"}),
    Probe("unauthenticated and malformed", b"{", headers={"service_token": "wrong-token"}),
    Probe("empty body", b""),
    Probe("not JSON", b'{"workNo": 1, '),
    Probe("not UTF-8", b'{"workNo": "\xff", "eventList": []}'),
    Probe("array body", b"[1, 2]"),
    Probe("no workNo", orjson.dumps({"eventList": GOOD["eventList"]})),
    Probe("boolean workNo", orjson.dumps({"workNo": True, "eventList": GOOD["eventList"]})),
    Probe("no eventList", orjson.dumps({"workNo": "75003"})),
    Probe("empty eventList", orjson.dumps({"workNo": "75003", "eventList": []})),
    Probe("event not an object", orjson.dumps({"workNo": "75003", "eventList": [GOOD["eventList"][0], 3]})),
    Probe("event without eventType", orjson.dumps({"workNo": "75003", "eventList": [{"content": None}]})),
    Probe("eventGenTime that is no time", orjson.dumps({"workNo": "75003", "eventList": [
        {"eventType": "AgentState_Ready", "eventGenTime": "2025-11-24T09:33:20Z"}]})),
    Probe("eventGenTime as text", orjson.dumps({"workNo": "75003", "eventList": [
        {"eventType": "AgentState_Ready", "eventGenTime": "1763900000002"}]})),
    Probe("too many events", orjson.dumps({"workNo": "75003", "eventList": [{"eventType": "A"}] * 51})),
    Probe("body too large", orjson.dumps({"workNo": "75003", "eventList": [{"eventType": "A", "content": "x" * 70_000}]})),
    Probe("text/plain", headers={"Content-Type": "text/plain"}),
    Probe("charset other than UTF-8", headers={"Content-Type": "application/json; charset=ISO-8859-1"}),
    Probe("headers too large", headers={"X-Padding": "p" * 5000}),
]
KAFKA_DOWN = Probe("vendor-shaped push while Kafka is unreachable")


async def ask(client: Http, bridge: BridgeProcess, contract: OpenApi, probe: Probe) -> tuple[str, int, dict, bytes]:
    url = bridge.url.replace(contract.push_path, "/other/path") if probe.other_path else bridge.url
    reply = await client.request(probe.method, url, probe.body, push_headers(**(probe.headers or {})))
    where = "other paths" if probe.other_path else f"{probe.method} {contract.push_path}"
    return where, reply.status, reply.headers, reply.body


@pytest.mark.parametrize("mode", ["refuse", "quarantine"])
async def test_answers_are_exactly_the_documented_ones(mode, client, kafka, tls_dir, tmp_path):
    contract = OpenApi()
    env = bridge_env(kafka, f"test.openapi.{mode}", **LIMITS, **malformed_pushes_env(mode))
    answers = []
    process = BridgeProcess(env, tls_dir).start(tmp_path)
    try:
        for probe in PROBES:
            answers.append((probe, *await ask(client, process, contract, probe)))
    finally:
        await process.astop()
    down = BridgeProcess({**env, "BRIDGE_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
                   "BRIDGE_CREATE_TOPICS": "false"}, tls_dir).start(tmp_path, ready=False)
    try:
        answers.append((KAFKA_DOWN, *await ask(client, down, contract, KAFKA_DOWN)))
    finally:
        await down.astop()

    mismatches = {probe.name: problems for probe, where, status, headers, body in answers
                  if (problems := contract.answer_problems(where, status, headers, body))}
    assert mismatches == {}
    # An answer to HEAD has no body to read a retcode from: its status alone is compared.
    observed = {(where, status, orjson.loads(body)["retcode"] if probe.method != "HEAD" else "")
                for probe, where, status, _, body in answers}
    documented = {(a.where, a.status, a.retcode if not a.where.startswith("HEAD ") else "")
                  for a in contract.answers() if mode in a.modes}
    assert observed - documented == set(), "answers the document does not list"
    assert documented - observed == set(), "documented answers no request reached"
    print(f"{mode}: {len(answers)} requests, {len(observed)} distinct answers, all documented")


async def test_management_answers_are_exactly_the_documented_ones(client, bridge, kafka, tls_dir, tmp_path):
    """docs/contracts/openapi-management.yaml against the management port of a ready bridge and of
    one that cannot keep pushes (Kafka unreachable, no spool): every answer matches the document,
    and every documented (where, status) is reached."""
    contract = OpenApi.management()
    down = BridgeProcess(bridge_env(kafka, "test.openapi.management", BRIDGE_CREATE_TOPICS="false",
                             BRIDGE_KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}"), tls_dir)
    down.start(tmp_path, ready=False)
    requests = [(method, path) for path in contract.doc["paths"] for method in ("GET", "HEAD", "POST", "DELETE")]
    requests += [("GET", "/no/such/path"), ("PUT", "/"), ("GET", "/readyz/")]
    answers = []
    try:
        for process in (bridge, down):
            for method, path in requests:
                reply = await client.request(method, process.management_url + path, allow_redirects=False)
                answers.append((method, path, reply.status, reply.headers, reply.body))
    finally:
        await down.astop()
    mismatches = {f"{method} {path} {status}": problems for method, path, status, headers, body in answers
                  if (problems := contract.answer_problems(contract.where(method, path), status, headers, body,
                                                           head=method == "HEAD"))}
    assert mismatches == {}
    observed = {(contract.where(method, path), status) for method, path, status, _, _ in answers}
    documented = {(where, int(status)) for where, responses in contract.operations().items() for status in responses}
    assert observed == documented
    metrics = next(body for method, path, status, _, body in answers if (method, path) == ("GET", "/metrics"))
    families = {family.name for family in text_string_to_metric_families(metrics.decode())}
    assert {"bridge_pushes", "bridge_inflight_pushes"} <= families, "the Prometheus text format, parsed"
