"""A push's records go into the producer's open batches in one step (bridge/kafka/appends.py),
checked against aiokafka's own accumulator: a producer made but never started, no broker needed."""
from __future__ import annotations

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import ProducerClosed
from aiokafka.structs import TopicPartition

from bridge.kafka.appends import append_push
from bridge.records import Record


def push(agent: bytes, events: int, size: int = 10) -> list[Record]:
    return [Record("t", agent, b"x" * size, [("ce_id", f"{n}".encode())]) for n in range(events)]


async def test_pushes_share_their_partitions_open_batch_and_wait_for_the_batch_itself() -> None:
    producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1")
    queued = producer._message_accumulator._batches
    first = append_push(producer, push(b"1001", 3), [2, 2, 2])
    second = append_push(producer, push(b"1002", 2) + push(b"1003", 1), [2, 2, 5])
    two, five = queued[TopicPartition("t", 2)], queued[TopicPartition("t", 5)]
    assert len(two) == 1 and two[0].record_count == 5 and len(five) == 1 and five[0].record_count == 1
    assert first == [two[0].future] and second == [two[0].future, five[0].future], "one future per batch"


async def test_a_full_batch_is_followed_by_a_new_one_and_the_push_waits_for_both() -> None:
    producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1", max_batch_size=1024)
    futures = append_push(producer, push(b"1001", 30, size=100), [0] * 30)
    batches = list(producer._message_accumulator._batches[TopicPartition("t", 0)])
    assert len(batches) > 1 and sum(b.record_count for b in batches) == 30
    assert futures == [b.future for b in batches], "in order, each once"


async def test_a_closed_producer_refuses_as_send_does() -> None:
    producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1")
    await producer._message_accumulator.close()
    with pytest.raises(ProducerClosed):
        append_push(producer, push(b"1001", 1), [0])
