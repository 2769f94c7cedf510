"""Plays the CC-Gateway: signed-in agents pushing realistic event sequences to the bridge.

Each simulated agent behaves as the gateway does for one agent in push mode:
- it pushes one request at a time over a keep-alive HTTPS connection and waits for the answer;
  events that occur meanwhile wait in the agent's queue and go out in later pushes (1-6 events);
- a push fails on a status other than 200, a retcode other than "0", a connection error or a
  timeout; a failed push is sent again, with the very same body, after the retry interval;
- once failures have lasted `signout_after_s` without a success in between, the gateway signs
  the agent out: the agent stops and is counted as signed out. A success resets that clock.

Every event carries `eventGenTime` (epoch ms), strictly increasing per agent, so
(workNo, eventGenTime) names one event. Every push answered "0" goes into a Ledger with those
identities, in order; failures, sign-outs and marks set by a fault driver are timestamped there
too. `bench.verify` compares the ledger with what Kafka holds.

    python -m bench.simulate --url https://127.0.0.1:8043/service-cloud/rest/cc-ai/v1/agentevent/pushresult \\
        --cafile .local/tls/ca.pem --token local-dev-token --agents 200 --duration 60 --ledger run.jsonl

It stops by itself: new events stop after `duration_s` (or once `max_pushes` pushes were
acknowledged, or when `Simulator.stop()` is called); queued events are then pushed for at most
`drain_s` more seconds.
"""
from __future__ import annotations

import argparse
import asyncio
import random
import ssl
import sys
import time
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from tests.support import until

PUSH_PATH = "/service-cloud/rest/cc-ai/v1/agentevent/pushresult"
CONTENT_TYPE = "application/json; charset=UTF-8"


@dataclass(frozen=True)
class SimSettings:
    url: str
    agents: int = 50
    duration_s: float = 60.0
    max_pushes: int | None = None
    cafile: str | None = None
    token: str = "local-dev-token"
    node: str = "AgentGateway1"
    retry_interval_s: float = 10.0      # the gateway's EVENT_PUSH_FAIL_INTERVALTIME
    timeout_s: float = 8.0              # how long one push may take before it counts as failed
    signout_after_s: float = 120.0      # the gateway's EVENT_PUSH_FAIL_TOTALTIME
    think_s: tuple[float, float] = (0.5, 2.5)  # pause between an agent's bursts of events
    max_events_per_push: int = 6
    drain_s: float = 30.0
    guid_rotation_s: float = 60.0       # dynamic authentication: a new Guid about every minute
    first_work_no: int = 100001
    seed: int = 1
    connections: int | None = None      # the pool shared by every agent (None: one per agent, plus 8)


# -- the ledger ----------------------------------------------------------------------------------

class Ledger:
    """What happened to the pushes, in order, with wall-clock times (epoch seconds).

    Entries: {"kind": "ack", "t", "agent", "ids": [eventGenTime, ...], "tries", "latency"[, "failing_s"]}
             {"kind": "fail", "t", "agent", "why"}
             {"kind": "signout" | "abandon", "t", "agent", "failing_s"}
             {"kind": "mark", "t", "name"}        (set by whoever injects faults)
    `failing_s`: how long the agent's pushes had been failing when this entry ended the run of
    failures (from sending the first failed attempt); "abandon": still retrying when time was up.
    Kept in memory and, with a path, also appended to a JSONL file as they happen.
    """

    def __init__(self, path: Path | str | None = None) -> None:
        self.entries: list[dict[str, Any]] = []
        self.path = Path(path) if path else None
        self._file = open(self.path, "wb") if self.path else None  # noqa: SIM115 (closed by close())

    def add(self, kind: str, **fields: Any) -> dict[str, Any]:
        entry = {"kind": kind, "t": round(time.time(), 3), **fields}
        self.entries.append(entry)
        if self._file is not None:
            self._file.write(orjson.dumps(entry) + b"\n")
        return entry

    def mark(self, name: str) -> None:
        self.add("mark", name=name)
        self.flush()

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def of_kind(self, kind: str) -> Iterator[dict[str, Any]]:
        return (e for e in self.entries if e["kind"] == kind)

    @classmethod
    def load(cls, path: Path | str) -> Ledger:
        ledger = cls()
        with open(path, "rb") as lines:
            ledger.entries = [orjson.loads(line) for line in lines if line.strip()]
        return ledger


# -- what an agent does --------------------------------------------------------------------------

Burst = list[tuple[str, Any]]  # events that happen together: (eventType, content)


def agent_story(work_no: str, rng: random.Random) -> Iterator[Burst]:
    """Sign-in, then calls, with now and then a not-ready or a rest period. Never ends."""
    yield [("AgentOther_InService", None), ("AgentState_Ready", None)]
    calls = 0
    while True:
        calls += 1
        callid = f"{int(time.time())}-{work_no[-4:]}{calls}"
        customer = f"138{rng.randrange(10**8):08d}"
        choice = rng.random()
        if choice < 0.65:
            yield from inbound_call(callid, customer, rng)
        elif choice < 0.80:
            yield from outbound_call(callid, customer, rng)
        elif choice < 0.92:
            yield [("AgentState_SetNotReady_Success", {"reason": rng.choice(["200", "201", "305"])})]
            yield [("AgentState_CancelNotReady_Success", None), ("AgentState_Ready", None)]
        else:
            yield [("AgentState_SetRest_Success", {"restTime": rng.choice(["300", 600]), "restReason": "1"})]
            yield [("AgentState_CancelRest_Success", None), ("AgentState_Ready", None)]


def inbound_call(callid: str, customer: str, rng: random.Random) -> Iterator[Burst]:
    ringing = {"caller": customer, "transfer": "", "callid": callid, "transfrom": "", "called": "95555",
               "type": "0", "mediaType": "5", "mediaAbility": "1", "feature": "0"}
    yield [("AgentOther_PhoneAlerting", None), ("AgentEvent_Ringing", ringing)]
    talking = [("AgentEvent_Talking", {"caller": customer, "callid": callid, "called": "95555", "feature": "0",
                                       "type": "0", "mediaAbility": "1"})]
    recording = rng.random() < 0.5
    if recording:  # media events mix numbers and strings, as the vendor's do
        record_id = f"{rng.randrange(10**9)}"
        talking.append(("AgentMediaEvent_Record", {
            "taskId": rng.randrange(1, 10**6), "caller": customer, "called": "95555", "locationId": 0,
            "recordID": record_id, "fileName": f"Y:/0/{record_id}.V3", "callId": callid,
            "fileMediaType": rng.choice([1, "1", 2])}))
    yield talking
    if rng.random() < 0.6:
        ended = [("AgentEvent_Call_Release", callid)]  # content is the bare call id
    else:
        ended = [("AgentEvent_Customer_Release", {"callid": callid, "number": customer})]
    if recording:
        ended.append(("AgentMediaEvent_StopRecordDone", {"callId": callid, "recordID": record_id}))
    yield [*ended, ("AgentState_Work", None)]
    yield [("AgentState_Ready", None)]


def outbound_call(callid: str, customer: str, rng: random.Random) -> Iterator[Burst]:
    yield [("AgentEvent_Customer_Alerting", {"callid": callid, "otherPhoneWorkno": "", "otherPhone": customer,
                                             "type": "1"})]
    yield [("AgentEvent_Talking", {"caller": "95555", "callid": callid, "called": customer, "feature": "7",
                                   "type": "1", "mediaAbility": 1})]
    yield [("AgentEvent_Customer_Release", {"callid": callid, "number": customer}), ("AgentState_Work", None)]
    yield [("AgentState_Ready", None)]


@dataclass
class Agent:
    work_no: str
    rng: random.Random
    next_due: float                       # wall time of the next burst of events
    story: Iterator[Burst] = field(init=False)
    queue: deque = field(default_factory=deque)
    last_gen_ms: int = 0
    failing_since: float | None = None    # start of the current run of failures
    guid: str = ""
    guid_at: float = 0.0

    def __post_init__(self) -> None:
        self.story = agent_story(self.work_no, self.rng)

    def generate_until(self, until: float, think_s: tuple[float, float]) -> int:
        """Queue every burst due by `until`, stamped with its due time (strictly increasing)."""
        made = 0
        while self.next_due <= until:
            for event_type, content in next(self.story):
                gen_ms = max(int(self.next_due * 1000), self.last_gen_ms + 1)
                self.last_gen_ms = gen_ms
                self.queue.append({"eventType": event_type, "workNo": self.work_no, "content": content,
                                   "eventGenTime": gen_ms})
                made += 1
            self.next_due += self.rng.uniform(*think_s)
        return made

    def current_guid(self, now: float, node: str, rotation_s: float) -> str:
        if not self.guid or now - self.guid_at >= rotation_s:
            self.guid, self.guid_at = f"{uuid.UUID(int=self.rng.getrandbits(128), version=4)}.{node}", now
        return self.guid


# -- the gateway ---------------------------------------------------------------------------------

@dataclass
class Summary:
    agents: int
    elapsed_s: float
    pushes_acked: int
    events_acked: int
    attempts: int
    failures: Counter
    signed_out: int
    abandoned: int            # agents still retrying when the drain time ran out
    events_generated: int
    events_unsent: int
    latencies: list[float]
    longest_failing_s: float = 0.0  # the longest an agent's pushes kept failing before one was accepted

    def line(self) -> str:
        lat = sorted(self.latencies)
        pct = (lambda q: f"{lat[min(len(lat) - 1, int(q * len(lat)))] * 1000:.0f}") if lat else (lambda q: "-")
        top = ",".join(f"{why}:{n}" for why, n in self.failures.most_common(4)) or "-"
        return (f"agents={self.agents} elapsed_s={self.elapsed_s:.1f} pushes_acked={self.pushes_acked} "
                f"events_acked={self.events_acked} attempts={self.attempts} failed={sum(self.failures.values())} "
                f"signed_out={self.signed_out} abandoned={self.abandoned} events_unsent={self.events_unsent} "
                f"push_ms_p50={pct(0.5)} p99={pct(0.99)} max={pct(1.0)} "
                f"longest_failing_s={self.longest_failing_s:.1f} failures={top}")


class Simulator:
    """The gateway for `settings.agents` agents. `await run()` once; `stop()` ends it early.
    `route(workNo)`, when given, is the URL each push of that agent goes to (an agent-affine router
    in front of several bridges); otherwise every push goes to `settings.url`."""

    def __init__(self, settings: SimSettings, ledger: Ledger | None = None,
                 route: Callable[[str], str] | None = None) -> None:
        self.settings = settings
        self._route = route
        self.ledger = ledger if ledger is not None else Ledger()
        self._stop_at = float("inf")
        self._pushes_acked = self._events_acked = self._attempts = 0
        self._signed_out = self._abandoned = self._generated = 0
        self._failures: Counter = Counter()
        self._latencies: list[float] = []
        self._longest_failing_s = 0.0
        self._agents: list[Agent] = []

    def stop(self) -> None:
        """No new events from now on; what is queued is still pushed (for at most drain_s)."""
        self._stop_at = min(self._stop_at, time.time())

    @property
    def pushes_acked(self) -> int:
        return self._pushes_acked

    async def around(self, fault: Callable[[], Awaitable[None]], warm: Callable[[], bool], warm_within_s: float,
                     what: str, after_s: float) -> Summary:
        """A drill's load: once `warm()` holds (checked off the loop, within `warm_within_s`; `what`
        names it), mark "fault" in the ledger, run `fault`, mark "restored" and keep the load for
        `after_s` more; then stop it and close the ledger, whatever happened."""
        load = asyncio.create_task(self.run())
        try:
            await until(lambda: warm() or load.done(), warm_within_s, what)
            self.ledger.mark("fault")
            await fault()
            self.ledger.mark("restored")
            await asyncio.sleep(after_s)
        finally:
            self.stop()
            summary = await load
            self.ledger.close()
        return summary

    async def run(self) -> Summary:
        s = self.settings
        started = time.time()
        self._stop_at = min(self._stop_at, started + s.duration_s)
        master = random.Random(s.seed)
        self._agents = [Agent(str(s.first_work_no + n), random.Random(master.getrandbits(64)),
                              next_due=started + master.uniform(0, s.think_s[1])) for n in range(s.agents)]
        context = ssl.create_default_context(cafile=s.cafile) if s.url.startswith("https") else None
        connector = aiohttp.TCPConnector(ssl=context if context is not None else False,
                                         limit=s.connections or s.agents + 8, keepalive_timeout=60)
        timeout = aiohttp.ClientTimeout(total=s.timeout_s)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                         skip_auto_headers=["Content-Type", "User-Agent"]) as session:
            await asyncio.gather(*(self._run_agent(agent, session) for agent in self._agents))
        self.ledger.flush()
        return Summary(s.agents, time.time() - started, self._pushes_acked, self._events_acked, self._attempts,
                       self._failures, self._signed_out, self._abandoned, self._generated,
                       sum(len(a.queue) for a in self._agents), self._latencies, self._longest_failing_s)

    def _drain_deadline(self) -> float:
        return self._stop_at + self.settings.drain_s

    async def _run_agent(self, agent: Agent, session: aiohttp.ClientSession) -> None:
        s = self.settings
        while True:
            now = time.time()
            self._generated += agent.generate_until(min(now, self._stop_at), s.think_s)
            if not agent.queue:
                if now >= self._stop_at:
                    return
                await asyncio.sleep(max(0.0, min(agent.next_due, self._stop_at) - now))
                continue
            if now >= self._drain_deadline():
                return  # drain time is over; the rest stays unsent
            size = min(len(agent.queue), agent.rng.randint(1, s.max_events_per_push))
            events = [agent.queue[i] for i in range(size)]
            if not await self._push_until_answered(agent, events, session):
                return
            for _ in range(size):
                agent.queue.popleft()

    async def _push_until_answered(self, agent: Agent, events: list[dict], session: aiohttp.ClientSession) -> bool:
        """Push `events` until "0" (True), or until the agent is signed out or time is up (False)."""
        s = self.settings
        body = orjson.dumps({"workNo": agent.work_no, "eventList": events})
        tries = 0
        while True:
            tries += 1
            self._attempts += 1
            sent = time.time()
            url = self._route(agent.work_no) if self._route else s.url
            why = await self._post(session, url, body, agent.current_guid(sent, s.node, s.guid_rotation_s))
            answered = time.time()
            if why is None:
                self._pushes_acked += 1
                self._events_acked += len(events)
                self._latencies.append(answered - sent)
                self.ledger.add("ack", agent=agent.work_no, ids=[e["eventGenTime"] for e in events], tries=tries,
                                latency=round(answered - sent, 4), **self._failing(agent, answered))
                if agent.failing_since is not None:
                    self._longest_failing_s = max(self._longest_failing_s, answered - agent.failing_since)
                agent.failing_since = None
                if s.max_pushes is not None and self._pushes_acked >= s.max_pushes:
                    self.stop()
                return True
            self._failures[why] += 1
            self.ledger.add("fail", agent=agent.work_no, why=why)
            if agent.failing_since is None:
                agent.failing_since = sent
            if answered - agent.failing_since >= s.signout_after_s:
                self._signed_out += 1
                self.ledger.add("signout", agent=agent.work_no, **self._failing(agent, answered))
                return False
            if answered + s.retry_interval_s >= self._drain_deadline():
                self._abandoned += 1
                self.ledger.add("abandon", agent=agent.work_no, **self._failing(agent, answered))
                return False
            await asyncio.sleep(s.retry_interval_s)

    @staticmethod
    def _failing(agent: Agent, now: float) -> dict[str, float]:
        """How long the agent's pushes have been failing: from sending the first failed attempt."""
        return {} if agent.failing_since is None else {"failing_s": round(now - agent.failing_since, 3)}

    async def _post(self, session: aiohttp.ClientSession, url: str, body: bytes, guid: str) -> str | None:
        """None when the push was accepted ("0"), otherwise why it failed, in a few words."""
        headers = {"Content-Type": CONTENT_TYPE, "Guid": guid, "service_token": self.settings.token}
        try:
            async with session.post(url, data=body, headers=headers) as response:
                answer = await response.read()
                status = response.status
        except TimeoutError:
            return "timeout"
        except (aiohttp.ClientError, OSError) as exc:
            return f"conn:{type(exc).__name__}"
        try:
            retcode = orjson.loads(answer).get("retcode")
        except (orjson.JSONDecodeError, AttributeError):
            retcode = None
        if status == 200 and retcode == "0":
            return None
        return f"http{status}:{retcode}"


# -- command line --------------------------------------------------------------------------------

def pair(text: str) -> tuple[float, float]:
    low, _, high = text.partition(",")
    return float(low), float(high or low)


def parse_args(argv: list[str] | None = None) -> tuple[SimSettings, str | None]:
    parser = argparse.ArgumentParser(prog="python -m bench.simulate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help=f"push URL, e.g. https://127.0.0.1:8043{PUSH_PATH}")
    parser.add_argument("--cafile", help="PEM file of the CA to trust for the bridge's certificate")
    parser.add_argument("--token", default="local-dev-token", help="service_token header")
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of new events")
    parser.add_argument("--max-pushes", type=int, help="also stop after this many acknowledged pushes")
    parser.add_argument("--retry-interval", type=float, default=10.0, help="seconds between attempts of a failed push")
    parser.add_argument("--timeout", type=float, default=8.0, help="seconds before a push counts as failed")
    parser.add_argument("--signout-after", type=float, default=120.0, help="seconds of failures before sign-out")
    parser.add_argument("--think", type=pair, default=(0.5, 2.5), help="MIN,MAX seconds between an agent's bursts")
    parser.add_argument("--drain", type=float, default=30.0, help="seconds to push what is queued after the end")
    parser.add_argument("--first-work-no", type=int, default=100001)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--ledger", help="write the ledger to this JSONL file")
    parser.add_argument("--connections", type=int, help="connections shared by all agents (default: one per agent)")
    args = parser.parse_args(argv)
    settings = SimSettings(url=args.url, agents=args.agents, duration_s=args.duration, max_pushes=args.max_pushes,
                           cafile=args.cafile, token=args.token, retry_interval_s=args.retry_interval,
                           timeout_s=args.timeout, signout_after_s=args.signout_after, think_s=args.think,
                           drain_s=args.drain, first_work_no=args.first_work_no, seed=args.seed,
                           connections=args.connections)
    return settings, args.ledger


def main(argv: list[str] | None = None) -> int:
    settings, ledger_path = parse_args(argv)
    ledger = Ledger(ledger_path)
    try:
        summary = asyncio.run(Simulator(settings, ledger).run())
    finally:
        ledger.close()
    print(summary.line())
    return 0 if summary.signed_out == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
