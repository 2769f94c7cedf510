"""Appending a push's records to the producer's open batches in one go, with one future per batch.

aiokafka's `send` takes one record at a time: a coroutine per record, its partition and size
checked again, and a future made and later resolved for each. For a push of a few events that was
three quarters of the write path's CPU. Here all of a push's records are appended synchronously to
the open batch of their partition (the same batch `send` would use, so pushes still share batches
and requests), a new batch started when one is full, and the push waits for the batches' own
futures. Nothing can run between the records of one push, so they stay together and in order; the
accumulator's queue per partition keeps the batches in order, and the producer's idempotence
assigns their sequence numbers when they are sent, as it does for `send`.

Borrowed from aiokafka (pinned to one minor release; tests/unit/test_borrowed_names.py fails when
these change): the producer's `_message_accumulator`; the accumulator's `_batches` (the queued,
not yet sent batches per partition, newest last), `_append_batch`, `create_builder`, `_closed` and
`_exception` (what `add_message` checks first); a queued batch's `_builder` and `future`.
"""
from __future__ import annotations

import asyncio
import copy
from collections.abc import Sequence
from typing import Any

from aiokafka.errors import ProducerClosed
from aiokafka.structs import TopicPartition

from ..records import Record


def append_push(producer: Any, records: Sequence[Record], partitions: Sequence[int]) -> list[asyncio.Future[Any]]:
    """Append `records` (each to its partition in `partitions`) to the producer's open batches;
    the futures of the batches they went to, each once, done when Kafka acknowledged the batch.
    Raises what aiokafka's `send` would when the producer is closed or has failed."""
    accumulator = producer._message_accumulator
    if accumulator._closed:
        raise ProducerClosed()
    if accumulator._exception is not None:
        raise copy.copy(accumulator._exception)
    futures: list[asyncio.Future[Any]] = []
    current: dict[TopicPartition, Any] = {}  # the batch each partition's records go to now
    for record, partition in zip(records, partitions, strict=True):
        tp = TopicPartition(record.topic, partition)
        batch = current.get(tp)
        if batch is None:
            queued = accumulator._batches.get(tp)
            batch = queued[-1] if queued else None
        if batch is None or batch._builder.append(timestamp=None, key=record.key, value=record.value,
                                                  headers=record.headers) is None:
            batch = accumulator._append_batch(accumulator.create_builder(), tp)
            batch._builder.append(timestamp=None, key=record.key, value=record.value,
                                  headers=record.headers)  # fits an empty batch
        if current.get(tp) is not batch:
            current[tp] = batch
            futures.append(batch.future)
    return futures
