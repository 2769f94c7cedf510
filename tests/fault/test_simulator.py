"""The gateway simulator against a scripted in-process receiver (plain HTTP on loopback): it
follows the gateway's rules, or the drills would prove nothing."""
from __future__ import annotations

import asyncio
import re
from collections import defaultdict

import orjson
from aiohttp import web

from bench.simulate import Ledger, SimSettings, Simulator
from tests.support import free_port

GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\.AgentGateway1")


class Receiver:
    """Answers per a script: `refuse(agent, attempt)` says whether to answer 503; `delay_s` stalls."""

    def __init__(self, refuse=lambda agent, attempt: False, delay_s: float = 0.0) -> None:
        self.refuse = refuse
        self.delay_s = delay_s
        self.bodies: dict[str, list[bytes]] = defaultdict(list)   # every attempt, per agent
        self.accepted: dict[str, list[bytes]] = defaultdict(list)
        self.headers: list[dict] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        agent = orjson.loads(body)["workNo"]
        self.bodies[agent].append(body)
        self.headers.append(dict(request.headers))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.refuse(agent, len(self.bodies[agent])):
            return web.json_response({"message": "Kafka is not reachable", "retcode": "100-007"}, status=503)
        self.accepted[agent].append(body)
        return web.json_response({"message": "success", "retcode": "0"})


async def simulate(receiver: Receiver, **settings) -> tuple[Ledger, object]:
    app = web.Application()
    app.router.add_post("/push", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        ledger = Ledger()
        summary = await Simulator(SimSettings(url=f"http://127.0.0.1:{port}/push", token="t0k", **settings),
                                  ledger).run()
        return ledger, summary
    finally:
        await runner.cleanup()


async def test_agents_sign_in_then_push_ordered_stamped_events_one_push_at_a_time():
    receiver = Receiver()
    ledger, summary = await simulate(receiver, agents=5, duration_s=3.0, think_s=(0.05, 0.2), drain_s=5)
    assert summary.pushes_acked == sum(len(b) for b in receiver.accepted.values()) > 5 * 3
    for agent, bodies in receiver.accepted.items():
        events = [e for body in bodies for e in orjson.loads(body)["eventList"]]
        assert [e["eventType"] for e in events[:2]] == ["AgentOther_InService", "AgentState_Ready"]
        stamps = [e["eventGenTime"] for e in events]
        assert stamps == sorted(set(stamps)), "eventGenTime must strictly increase per agent"
        assert all(1 <= len(orjson.loads(b)["eventList"]) <= 6 for b in bodies)
        assert all(e["workNo"] == agent for e in events)
        acked = [gen for entry in ledger.of_kind("ack") if entry["agent"] == agent for gen in entry["ids"]]
        assert acked == stamps
    shapes = {type(e["content"]).__name__ for bodies in receiver.accepted.values() for b in bodies
              for e in orjson.loads(b)["eventList"]}
    assert {"NoneType", "dict"} <= shapes
    header = receiver.headers[0]
    assert header["Content-Type"] == "application/json; charset=UTF-8" and header["service_token"] == "t0k"
    assert GUID.fullmatch(header["Guid"])


async def test_a_failed_push_is_retried_with_the_same_body_and_later_events_wait():
    receiver = Receiver(refuse=lambda agent, attempt: 2 <= attempt <= 4)  # 2nd push refused three times
    ledger, summary = await simulate(receiver, agents=3, duration_s=2.5, think_s=(0.05, 0.1),
                                     retry_interval_s=0.3, drain_s=5)
    for agent, attempts in receiver.bodies.items():
        assert attempts[1] == attempts[2] == attempts[3] == attempts[4], "a retry must resend the same body"
        events = [e for body in receiver.accepted[agent] for e in orjson.loads(body)["eventList"]]
        stamps = [e["eventGenTime"] for e in events]
        assert stamps == sorted(set(stamps)), "events queued during retries must follow, in order"
    assert sum(1 for _ in ledger.of_kind("fail")) == 3 * 3
    assert summary.signed_out == 0 and summary.events_unsent == 0
    assert max(e["tries"] for e in ledger.of_kind("ack")) == 4
    retried = [e for e in ledger.of_kind("ack") if e["tries"] == 4]
    assert len(retried) == 3 and all(e["failing_s"] >= 3 * 0.3 for e in retried), "failing_s spans the retries"
    assert all("failing_s" not in e for e in ledger.of_kind("ack") if e["tries"] == 1)


async def test_an_agent_failing_past_the_limit_is_signed_out_and_a_success_resets_the_clock():
    # Agent 100001 always fails; 100002 fails in runs of 3 attempts (0.6 s) with successes between.
    def refuse(agent, attempt):
        return agent == "100001" or attempt % 4 != 0
    ledger, summary = await simulate(receiver := Receiver(refuse), agents=2, duration_s=3.0, think_s=(0.05, 0.1),
                                     retry_interval_s=0.2, signout_after_s=1.0, drain_s=1.5)
    assert [e["agent"] for e in ledger.of_kind("signout")] == ["100001"]
    assert summary.signed_out == 1
    assert not receiver.accepted["100001"] and receiver.accepted["100002"]
    assert 4 <= len(receiver.bodies["100001"]) <= 8  # about 1 s of attempts every 0.2 s, then silence


async def test_a_slow_answer_is_a_timeout_and_is_retried():
    _ledger, summary = await simulate(Receiver(delay_s=0.6), agents=2, duration_s=0.5, think_s=(0.05, 0.1),
                                     timeout_s=0.3, retry_interval_s=0.1, signout_after_s=1.0, drain_s=3)
    assert summary.failures["timeout"] >= 2
    assert summary.pushes_acked == 0 and summary.signed_out == 2


async def test_it_stops_after_a_number_of_pushes():
    receiver = Receiver()
    _ledger, summary = await simulate(receiver, agents=4, duration_s=60.0, max_pushes=20, think_s=(0.01, 0.05),
                                     drain_s=2)
    assert 20 <= summary.pushes_acked < 60 and summary.elapsed_s < 10
