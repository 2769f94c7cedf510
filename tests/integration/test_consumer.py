"""The consumer helper against a real broker, on a topic a real bridge filled the way the gateway
does: agents' call stories, with some pushes sent twice (a retry of a push that was written but not
answered "0"), so the topic really holds repeated ce_ids.

Each test reads the topic with its own consumer group and checks, per agent, that the application
saw every event once and in the order pushed: straight through, across a graceful restart (with a
retry straddling it), across a crash (abandoned without commit), and across a rebalance.
"""
from __future__ import annotations

import asyncio
import random
import uuid
from collections import defaultdict

import aiohttp
import orjson
import pytest
from conftest import client_context, push_headers

from bench.simulate import agent_story
from bridge.consumer import AgentEvent, AgentEventConsumer

pytestmark = pytest.mark.integration


class Gateway:
    """Pushes agents' stories through the bridge; remembers what each agent should be seen doing."""

    def __init__(self, url: str, tls_dir, first_agent: int, agents: int) -> None:
        self.url, self.tls_dir = url, tls_dir
        self.stories = {str(first_agent + n): agent_story(str(first_agent + n), random.Random(n)) for n in range(agents)}
        self.stamp = 1_763_900_000_000
        self.expected: dict[str, list] = defaultdict(list)
        self.last_body: dict[str, bytes] = {}
        self.repeats = 0

    def next_push(self, agent: str) -> bytes:
        events = []
        for event_type, content in next(self.stories[agent]):
            self.stamp += 1
            events.append({"eventType": event_type, "workNo": agent, "content": content, "eventGenTime": self.stamp})
        if len(events) > 1 and self.stamp % 5 == 0:  # two identical events in one push are two events
            events.append(dict(events[-1]))
        self.expected[agent] += events
        return orjson.dumps({"workNo": agent, "eventList": events})

    async def push(self, rounds: int, retry_every: int = 3) -> None:
        """`rounds` pushes per agent; every `retry_every`-th push is sent twice, as a retry."""
        connector = aiohttp.TCPConnector(ssl=client_context(self.tls_dir))
        async with aiohttp.ClientSession(connector=connector, skip_auto_headers=["Content-Type"]) as session:
            async def agent_pushes(agent: str) -> None:
                for n in range(rounds):
                    body = self.next_push(agent)
                    for _ in range(2 if n % retry_every == retry_every - 1 else 1):
                        await self.send(session, body)
                    self.repeats += len(orjson.loads(body)["eventList"]) if n % retry_every == retry_every - 1 else 0
                    self.last_body[agent] = body
            await asyncio.gather(*(agent_pushes(agent) for agent in self.stories))

    async def resend_last(self, agents: list[str]) -> None:
        """The gateway retrying each agent's last push once more."""
        connector = aiohttp.TCPConnector(ssl=client_context(self.tls_dir))
        async with aiohttp.ClientSession(connector=connector, skip_auto_headers=["Content-Type"]) as session:
            for agent in agents:
                await self.send(session, self.last_body[agent])

    async def send(self, session: aiohttp.ClientSession, body: bytes) -> None:
        async with session.post(self.url, data=body, headers=push_headers()) as response:
            assert (response.status, await response.read()) == (200, b'{"message":"success","retcode":"0"}')

    @property
    def total(self) -> int:
        return sum(map(len, self.expected.values()))


class App:
    """The application: applies events, checks per agent that no two run at once, and (with a
    store) skips events it applied before a crash by their stored position."""

    def __init__(self, agents: set[str], use_store: bool = False, delay_s: float = 0.0) -> None:
        self.agents, self.use_store, self.delay_s = agents, use_store, delay_s
        self.applied: dict[str, list] = defaultdict(list)
        self.store: dict[tuple[str, str], tuple] = {}  # (agent, topic) -> position of the last event applied
        self.running: set[str] = set()
        self.overlaps = 0
        self.most_at_once = 0
        self.gate: asyncio.Event | None = None
        self.reached = asyncio.Event()
        self.target = 0

    async def handle(self, event: AgentEvent) -> None:
        if event.agent not in self.agents:
            return
        if self.use_store and not event.is_after(self.store.get((event.agent, event.topic))):
            return  # applied before the crash; the commit did not make it
        if event.agent in self.running:
            self.overlaps += 1
        self.running.add(event.agent)
        self.most_at_once = max(self.most_at_once, len(self.running))
        try:
            if self.gate is not None:
                await self.gate.wait()
            await asyncio.sleep(self.delay_s * random.random())
            self.applied[event.agent].append(event.event)
            self.store[(event.agent, event.topic)] = event.position  # in a real store: one transaction
        finally:
            self.running.discard(event.agent)
        if self.count >= self.target:
            self.reached.set()

    @property
    def count(self) -> int:
        return sum(map(len, self.applied.values()))


def consumer(kafka, topic: str, app: App, group: str, **settings) -> AgentEventConsumer:
    return AgentEventConsumer([topic], app.handle, group_id=group, **kafka.client_options(), **settings)


async def run_until(consumer: AgentEventConsumer, app: App, target: int, timeout: float = 60) -> asyncio.Task:
    """Start `consumer` and return its task once the app applied `target` events."""
    app.target = target
    app.reached.clear()
    task = asyncio.create_task(consumer.run())
    waiter = asyncio.create_task(app.reached.wait())
    done, _ = await asyncio.wait({task, waiter}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    if waiter not in done:
        waiter.cancel()
        if task in done:
            task.result()
        raise AssertionError(f"only {app.count} of {target} events applied")
    return task


async def finish(consumer: AgentEventConsumer, task: asyncio.Task) -> None:
    consumer.stop()
    await asyncio.wait_for(task, 60)


def assert_once_in_order(app: App, gateway: Gateway) -> None:
    assert app.overlaps == 0, "two events of one agent were handled at once"
    assert {a: app.applied[a] for a in gateway.expected} == dict(gateway.expected)


@pytest.fixture
def group() -> str:
    return f"test-consumer-{uuid.uuid4().hex[:8]}"


async def test_each_agent_sees_every_event_once_and_in_order(bridge, kafka, topic, tls_dir, group):
    gateway = Gateway(bridge.url, tls_dir, 81001, agents=10)
    await gateway.push(rounds=12)
    app = App(set(gateway.expected), delay_s=0.004)
    helper = consumer(kafka, topic, app, group)
    await finish(helper, await run_until(helper, app, gateway.total))
    assert_once_in_order(app, gateway)
    assert gateway.repeats > 0 and helper.counts.duplicates == gateway.repeats
    assert app.most_at_once > 1, "different agents are handled concurrently"
    print(f"events={gateway.total} repeats_dropped={helper.counts.duplicates} most_at_once={app.most_at_once} "
          f"commits={helper.counts.commits}")


async def test_a_graceful_restart_loses_nothing_and_repeats_nothing(bridge, kafka, topic, tls_dir, group):
    gateway = Gateway(bridge.url, tls_dir, 82001, agents=6)
    await gateway.push(rounds=10)
    app = App(set(gateway.expected))
    first = consumer(kafka, topic, app, group, max_buffered=10)
    await finish(first, await run_until(first, app, gateway.total // 2))
    # While no one reads: the rest of the topic, a retry of every agent's last push (whose first
    # copy may well be before the committed position), and new pushes.
    await gateway.resend_last(list(gateway.expected))
    await gateway.push(rounds=3, retry_every=2)
    second = consumer(kafka, topic, app, group)
    await finish(second, await run_until(second, app, gateway.total))
    assert_once_in_order(app, gateway)
    assert second.counts.warmed_up > 0, "the restarted consumer re-read the ids before its start"
    assert second.counts.duplicates >= len(gateway.expected)


async def test_after_a_crash_handled_events_come_again_unless_the_application_stored_its_position(
        bridge, kafka, topic, tls_dir, group):
    gateway = Gateway(bridge.url, tls_dir, 83001, agents=6)
    await gateway.push(rounds=8)
    agents = set(gateway.expected)
    plain, stored = App(agents), App(agents, use_store=True)

    async def both(event: AgentEvent) -> None:
        await plain.handle(event)
        await stored.handle(event)

    stored.target = 10 ** 9
    settings = {"commit_interval_s": 3600.0}  # no commit before the crash
    crashing = AgentEventConsumer([topic], both, group_id=group, **kafka.client_options(), **settings)
    task = await run_until(crashing, plain, gateway.total // 2)
    task.cancel()  # a crash: nothing committed, fetched work abandoned
    with pytest.raises(asyncio.CancelledError):
        await task
    handled_before = plain.count
    restarted = AgentEventConsumer([topic], both, group_id=group, **kafka.client_options())
    await finish(restarted, await run_until(restarted, plain, handled_before + gateway.total))
    assert plain.count == handled_before + gateway.total, "without a store: what was handled comes again"
    assert_once_in_order(stored, gateway)


async def test_a_rebalance_hands_partitions_over_without_loss_or_repeats(bridge, kafka, topic, tls_dir, group):
    gateway = Gateway(bridge.url, tls_dir, 84001, agents=12)
    await gateway.push(rounds=8)
    app = App(set(gateway.expected))
    fast = {"max_buffered": 20, "heartbeat_interval_ms": 100}  # members learn of a rebalance quickly
    first = consumer(kafka, topic, app, group, **fast)
    task_one = await run_until(first, app, 15)
    app.gate = asyncio.Event()  # hold the first consumer mid-way while the second one joins
    second = consumer(kafka, topic, app, group, **fast)
    task_two = asyncio.create_task(second.run())
    for _ in range(300):  # the first consumer is asked to give partitions up (its 2nd rebalance)
        if first.counts.rebalances >= 2:
            break
        await asyncio.sleep(0.1)
    app.target = gateway.total
    app.reached.clear()
    app.gate.set()
    await asyncio.wait_for(app.reached.wait(), 60)
    await asyncio.gather(finish(first, task_one), finish(second, task_two))
    print(f"first: {first.counts}\nsecond: {second.counts}")
    assert first.counts.rebalances >= 2
    assert first.counts.delivered > 0 and second.counts.delivered > 0, "both consumers got partitions"
    assert_once_in_order(app, gateway)


async def test_the_wallboard_example_ends_with_each_agent_s_last_state(bridge, kafka, topic, tls_dir, group,
                                                                       tmp_path):
    from examples.wallboard import STATES, Wallboard
    gateway = Gateway(bridge.url, tls_dir, 85001, agents=5)
    await gateway.push(rounds=6)
    board = Wallboard(str(tmp_path / "board.sqlite3"))
    helper = AgentEventConsumer([topic], board.handle, group_id=group, **kafka.client_options())
    task = asyncio.create_task(helper.run())
    expected = {}
    for agent, events in gateway.expected.items():
        states = [STATES[e["eventType"]] for e in events if e["eventType"] in STATES]
        expected[agent] = (states[-1], events[-1]["eventType"])
    for _ in range(300):
        shown = {agent: (state, last) for agent, state, _, last in board.rows() if agent in expected}
        if shown == expected:
            break
        await asyncio.sleep(0.1)
    await finish(helper, task)
    assert shown == expected
    assert "85001" in board.render()
