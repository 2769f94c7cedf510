"""Delivery's rule, without sockets: a push goes straight to Kafka only while the spool is idle and
Kafka takes it; otherwise it is spooled behind what is there; when neither can keep it, it is
refused with both reasons. A real spool on a temporary directory, a stand-in for Kafka."""
from __future__ import annotations

import asyncio

import pytest

from bridge.delivery import Delivery, Unavailable
from bridge.drainer import decode
from bridge.membership import Membership
from bridge.metrics import Metrics
from bridge.publisher import PublishError
from bridge.records import Record
from bridge.spool import OwnSlot

MiB = 1 << 20


class StandInKafka:
    """The publisher's surface (bridge.delivery.Kafka): ready or not, failing or not, recording writes."""

    def __init__(self, ready: bool = True, failing: str = "") -> None:
        self.ready = ready
        self.failing = failing
        self.published: list[bytes] = []

    @property
    def problem(self) -> str:
        return "" if self.ready else "Kafka is not reachable (stand-in)"

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def publish(self, records: list[Record], timeout: float | None = None) -> None:
        if self.failing:
            raise PublishError(self.failing)
        self.published += [r.value for r in records]

    async def publish_batch(self, records: list[Record], timeout: float | None = None) -> None:
        await self.publish(records, timeout)


def push(n: int, agent: bytes = b"1001") -> list[Record]:
    return [Record("t", agent, f'{{"n":{n}}}'.encode(), [])]


async def spooled_values(spool: OwnSlot) -> list[bytes]:
    return [r.value for e in await spool.read() for r in decode(e.payload)]


@pytest.fixture
async def spool(tmp_path):
    slot = OwnSlot.open(tmp_path, 64 * MiB, join_window_s=1.0)
    await slot.join()
    yield slot
    await slot.close()


def delivery_with(kafka: StandInKafka, spool: OwnSlot | None, problem: str = "") -> tuple[Delivery, Metrics]:
    metrics = Metrics()
    return Delivery(kafka, spool, metrics, problem), metrics


async def test_an_idle_spool_and_a_usable_kafka_send_straight_to_kafka(spool):
    kafka = StandInKafka()
    delivery, _ = delivery_with(kafka, spool)
    assert await delivery.keep(push(1)) is False
    assert kafka.published == [b'{"n":1}'] and spool.entries == 0 and delivery.mode == "direct"


async def test_kafka_not_usable_spools_and_the_mode_says_so(spool):
    kafka = StandInKafka(ready=False)
    delivery, metrics = delivery_with(kafka, spool)
    assert await delivery.keep(push(1)) is True
    assert kafka.published == [] and await spooled_values(spool) == [b'{"n":1}']
    assert delivery.mode == "spooling" and metrics.registry.get_sample_value("bridge_spooled_pushes_total") == 1


async def test_a_failed_direct_send_is_spooled_instead(spool):
    delivery, _ = delivery_with(StandInKafka(failing="Kafka did not acknowledge within 2 s"), spool)
    assert await delivery.keep(push(1)) is True
    assert await spooled_values(spool) == [b'{"n":1}']


async def test_while_the_spool_holds_anything_every_push_goes_behind_it(spool):
    kafka = StandInKafka(ready=False)
    delivery, _ = delivery_with(kafka, spool)
    await delivery.keep(push(1))
    kafka.ready = True  # Kafka is back, the drainer has not delivered yet
    assert await delivery.keep(push(2, agent=b"2002")) is True, "even another agent's push: the rule is one rule"
    assert kafka.published == [] and await spooled_values(spool) == [b'{"n":1}', b'{"n":2}']
    assert delivery.mode == "draining"


async def test_neither_kafka_nor_the_spool_refuses_with_both_reasons(spool):
    kafka = StandInKafka(ready=False)
    delivery, metrics = delivery_with(kafka, spool)
    await spool.leave()  # takes no pushes now
    with pytest.raises(Unavailable, match=r"Kafka is not reachable \(stand-in\), and this replica takes no pushes"):
        await delivery.keep(push(1))
    assert metrics.registry.get_sample_value("bridge_spool_errors_total") == 1


async def test_without_a_spool_kafka_alone_decides_and_the_spool_problem_is_named():
    delivery, _ = delivery_with(StandInKafka(failing="Kafka refused the events"), None, "no space left")
    with pytest.raises(Unavailable, match="Kafka refused the events, and the spool is unavailable: no space left"):
        await delivery.keep(push(1))
    kafka = StandInKafka()
    delivery, _ = delivery_with(kafka, None)
    assert await delivery.keep(push(1)) is False and kafka.published == [b'{"n":1}']
    kafka.ready = False
    assert delivery.mode == "unavailable" and not delivery.ready


async def test_a_hold_sends_every_push_to_the_spool(tmp_path):
    a = OwnSlot.open(tmp_path, 64 * MiB, join_window_s=0.001)
    b = OwnSlot.open(tmp_path, 64 * MiB, join_window_s=0.001)
    await a.join()
    await b.join()
    await a.append(b"older push of an agent that moves to b")
    await a.close()  # a dies: b must hold until a's slot is delivered
    kafka = StandInKafka()
    delivery, _ = delivery_with(kafka, b)
    assert await delivery.keep(push(1)) is True and b.holding
    assert kafka.published == []
    await b.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_membership_joins_and_leaves_with_readiness_before_the_verdict_changes(tmp_path):
    spool = OwnSlot.open(tmp_path, MiB, join_window_s=1.0)  # full once less than 64 KiB is free
    kafka = StandInKafka(ready=False)
    delivery, _ = delivery_with(kafka, spool)
    membership = Membership(delivery, grace_s=0)
    await membership._decide()
    assert membership.probed(by_router=False).ready and spool.serving, "the spool accepts: in, and joined"
    while spool.accepting:
        await spool.append(b"x" * 100_000)
    await membership._decide()
    verdict = membership.probed(by_router=False)
    assert verdict.status == 503 and "spool is full" in verdict.reason and not spool.serving
    kafka.ready = True
    await membership._decide()
    assert not membership.verdict.ready, "Kafka is back, but pushes must still go behind the full spool"
    while entries := await spool.read():  # the drainer's work
        await spool.ack(entries)
    await membership._decide()
    assert membership.verdict.ready and spool.serving, "delivered: joined again"
    await spool.close()


async def test_a_replica_the_router_stopped_checking_leaves_and_comes_back_with_the_checks(spool):
    clock = Clock()
    delivery, _ = delivery_with(StandInKafka(), spool)
    membership = Membership(delivery, grace_s=0, probe_loss_s=10.0, clock=clock)
    await membership._decide()
    clock.now += 60
    await membership._decide()
    assert membership.verdict.ready, "no router has checked yet (a replica without one): nothing is lost"
    membership.probed(by_router=True)
    clock.now += 9
    membership.probed(by_router=False)  # the kubelet's probe does not count
    await membership._decide()
    assert membership.verdict.ready and spool.serving
    clock.now += 2
    await membership._decide()
    assert "has not checked this replica for 11 s" in membership.verdict.reason and not spool.serving
    membership.probed(by_router=True)
    await membership._decide()
    assert membership.verdict.ready and spool.serving, "checked again: joined again (its join window begins)"


async def test_departing_leaves_the_spool_then_answers_404_and_never_joins_again(spool):
    delivery, _ = delivery_with(StandInKafka(), spool)
    membership = Membership(delivery, grace_s=0)
    await membership.start()
    assert membership.verdict.ready and spool.serving
    await membership.depart()
    assert membership.leaving and not spool.serving and membership.verdict.status == 404
    await membership._decide()
    assert membership.verdict.status == 404 and not spool.serving


async def test_with_a_volume_of_its_own_a_departing_replica_tells_the_router_once_its_spool_is_delivered(spool):
    delivery, _ = delivery_with(StandInKafka(ready=False), spool)
    membership = Membership(delivery, grace_s=0, spool_wait_s=5.0)
    await membership.start()
    await spool.append(b"spooled while Kafka is away")
    departing = asyncio.ensure_future(membership.depart())
    await asyncio.sleep(0.6)
    assert not departing.done() and membership.verdict.ready and spool.serving, "serving as usual meanwhile"
    while entries := await spool.read():  # Kafka is back: the drainer's work
        await spool.ack(entries)
    await departing
    assert membership.verdict.status == 404 and not spool.serving


async def test_with_a_volume_of_its_own_a_departing_replica_whose_spool_stays_full_keeps_its_agents(spool):
    delivery, _ = delivery_with(StandInKafka(ready=False), spool)
    membership = Membership(delivery, grace_s=0, spool_wait_s=0.5)
    await membership.start()
    await spool.append(b"spooled while Kafka is away")
    await membership.depart()
    assert membership.verdict.status == 503, "no 404: the router keeps its agents for it until it is back"
    assert "stay with it" in membership.verdict.reason and not spool.serving
