"""Atomic mode's pump (bridge/transactions.py) without Kafka: which pushes share a transaction, and
what becomes of every push of a group when its transaction fails or the pump stops."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiokafka.errors import KafkaError
from doubles import Keeper, TransactionalProducer

from bridge import config
from bridge.kafka.errors import PublishError
from bridge.records import Record
from bridge.transactions import TransactionPump

SETTINGS = config.load({"BRIDGE_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "BRIDGE_ATOMIC_PUSHES": "true",
                        "BRIDGE_KAFKA_LINGER_MS": "100"}, serving=False)
LINGER_S = SETTINGS.kafka_linger_ms / 1000


def push(*values: bytes) -> list[Record]:
    return [Record("agents", b"1001", value, []) for value in values]


class Rig:
    def __init__(self) -> None:
        self.producer = TransactionalProducer()
        self.keeper = Keeper(self.producer)
        self.pump = TransactionPump(self.keeper, SETTINGS, asyncio.get_running_loop())


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    made = Rig()
    made.pump.start()
    yield made
    await made.pump.stop()


async def test_pushes_arriving_within_the_linger_share_one_transaction(rig: Rig) -> None:
    first = asyncio.create_task(rig.pump.write(push(b"a1", b"a2")))
    await asyncio.sleep(LINGER_S / 10)
    await asyncio.gather(first, rig.pump.write(push(b"b1")), rig.pump.write(push(b"c1", b"c2")))
    await rig.pump.write(push(b"d1"))  # after the group was written: a transaction of its own
    assert rig.producer.committed == [[b"a1", b"a2", b"b1", b"c1", b"c2"], [b"d1"]]


async def test_a_failed_transaction_fails_every_push_of_its_group_and_asks_for_a_new_producer(rig: Rig) -> None:
    rig.producer.fail_commit = KafkaError("the broker went away")
    outcomes = await asyncio.gather(rig.pump.write(push(b"a1")), rig.pump.write(push(b"b1")),
                                    return_exceptions=True)
    assert [str(o) for o in outcomes] == ["Kafka transaction failed: KafkaError"] * 2
    assert all(isinstance(o, PublishError) for o in outcomes)
    assert rig.producer.committed == []
    assert rig.keeper.replacements == ["Kafka transaction failed (KafkaError)"]
    await rig.pump.write(push(b"c1"))  # the pump goes on with the next group
    assert rig.producer.committed == [[b"c1"]]


async def test_a_group_fails_at_once_while_kafka_is_unusable(rig: Rig) -> None:
    rig.keeper.ready, rig.keeper.problem = False, "Kafka is not reachable (X)"
    with pytest.raises(PublishError, match="Kafka transaction failed: PublishError"):
        await rig.pump.write(push(b"a1"))
    assert rig.producer.committed == [] and rig.producer.open is None and rig.keeper.replacements == []


async def test_a_push_whose_waiter_was_cancelled_is_left_out(rig: Rig) -> None:
    given_up = asyncio.create_task(rig.pump.write(push(b"a1")))
    await asyncio.sleep(0)
    given_up.cancel()  # its deadline passed, say, before the group was taken
    await rig.pump.write(push(b"b1"))
    assert given_up.cancelled()
    assert rig.producer.committed == [[b"b1"]]


async def test_stop_fails_the_pushes_still_queued() -> None:
    rig = Rig()
    rig.pump.start()
    queued = [asyncio.create_task(rig.pump.write(push(value))) for value in (b"a1", b"b1")]
    await asyncio.sleep(0)  # queued; the group is still gathering
    await rig.pump.stop()
    outcomes = await asyncio.gather(*queued, return_exceptions=True)
    assert [str(o) for o in outcomes] == ["the bridge is shutting down"] * 2
    assert all(isinstance(o, PublishError) for o in outcomes)
    assert rig.producer.committed == []
