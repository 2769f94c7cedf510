"""Writing records with the idempotent producer, outside transactions (the default mode).

- `per_agent`, for pushes: a push's records are appended to the open batches of their partitions
  in one synchronous step (bridge/kafka/appends.py), so consecutive pushes of one agent share
  batches and never interleave; then the push waits for those batches. Only a push whose partitions
  are not known yet (no metadata, or a record without a key) goes record by record through the
  producer's `send`, holding a lock per agent (record key) meanwhile, and a push of an agent whose
  lock is held waits for it.
- `batched`, for the spool's drainer (which publishes many pushes at once and is the only writer
  while it runs): the records go in one batch per partition, with one future per batch rather than
  per record.

Both pick each record's partition themselves, with Kafka's default rule, once per key and topic.
Both end in one future for all acknowledgements; a failed batch asks the supervisor for a new
producer. The caller bounds the wait and turns Kafka's errors into PublishError.

Borrowed from aiokafka (pinned to one minor release, checked by tests/unit/test_borrowed_names.py):
the producer's `client.cluster`, whose partition lists the partitioning reads.
"""
from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from typing import Any, cast

from aiokafka.partitioner import murmur2

from .kafka.appends import append_push
from .kafka.seams import Batch, Producer, ProducerKeeper
from .locks import KeyedLocks
from .records import Record


def partitions_of(producer: Producer, records: list[Record]) -> list[int | None]:
    """Kafka's default partitioning (the Java client's murmur2 rule), once per distinct key and
    topic of the push rather than once per record; None leaves the choice to the producer
    (a record without a key, or a topic whose metadata is not known yet)."""
    cluster = producer.client.cluster
    chosen: dict[tuple[str, bytes | None], int | None] = {}
    result: list[int | None] = []
    for r in records:
        partition = chosen.get((r.topic, r.key), -1)
        if partition == -1 and r.key is None:
            partition = None  # no key: the producer spreads such records itself
        elif partition == -1:
            count = len(cluster.partitions_for_topic(r.topic) or ())
            partition = chosen[(r.topic, r.key)] = (murmur2(r.key) & 0x7FFFFFFF) % count if count else None
        result.append(partition)
    return result


# (producer, records, their partitions) -> the futures of the batches they went to
Append = Callable[[Any, Sequence[Record], Sequence[int]], list[asyncio.Future[Any]]]


class Writes:
    """The idempotent producer's two write paths. `loop` is the running loop, kept so that no
    write asks asyncio for it (in Python 3.11 each such call is a getpid() system call)."""

    def __init__(self, supervisor: ProducerKeeper, loop: asyncio.AbstractEventLoop,
                 append: Append = append_push) -> None:
        self._supervisor = supervisor
        self._loop = loop
        self._append = append
        self._locks = KeyedLocks()

    async def per_agent(self, records: list[Record]) -> None:
        producer = self._supervisor.producer
        assert producer is not None  # the caller found the supervisor ready, and nothing awaited since
        partitions = partitions_of(producer, records)
        keys = [r.key for r in records if r.key is not None]
        if None not in partitions and not self._locks.held(keys):
            futures = self._append(producer, records, cast(list[int], partitions))
        else:
            async with self._locks.hold(keys):
                futures = [await producer.send(r.topic, r.value, key=r.key, headers=r.headers, partition=p)
                           for r, p in zip(records, partitions, strict=False)]
        await self._acknowledged(futures)

    async def batched(self, records: list[Record]) -> None:
        producer = self._supervisor.producer
        assert producer is not None  # the caller found the supervisor ready, and nothing awaited since
        # A batch names its partition, so each topic's partitions must be known first: a producer
        # made after a broker restart has no metadata yet, and guessing would put an agent's
        # records on a partition other than its own (out of order for its subscribers).
        known = {topic: sorted(await producer.partitions_for(topic)) for topic in {r.topic for r in records}}
        builders: dict[tuple[str, int], Batch] = {}
        futures = []
        for r, partition in zip(records, partitions_of(producer, records), strict=False):
            if partition is None:  # no key (a dead letter): any partition
                partition = random.choice(known[r.topic])
            builder = builders.get((r.topic, partition))
            if builder is None or builder.append(timestamp=None, key=r.key, value=r.value, headers=r.headers) is None:
                if builder is not None:  # full: send it, start the next one
                    futures.append(await producer.send_batch(builder, r.topic, partition=partition))
                builder = builders[(r.topic, partition)] = producer.create_batch()
                builder.append(timestamp=None, key=r.key, value=r.value, headers=r.headers)  # fits an empty batch
        for (topic, partition), builder in builders.items():
            futures.append(await producer.send_batch(builder, topic, partition=partition))
        await self._acknowledged(futures)

    def _acknowledged(self, futures: list[asyncio.Future[Any]]) -> asyncio.Future[None]:
        """One future for all of a write's acknowledgements, failing with the first error. A failed
        batch asks for a new producer whatever becomes of the write's waiter (which may time out:
        cancelling this future leaves the producer's own futures alone)."""
        supervisor = self._supervisor
        done: asyncio.Future[None] = self._loop.create_future()
        pending = len(futures)

        def settled(future: asyncio.Future[Any]) -> None:
            nonlocal pending
            pending -= 1
            error = None if future.cancelled() else future.exception()
            if error is not None:
                if not supervisor.replacing:
                    supervisor.want_new_producer(f"Kafka rejected a batch ({type(error).__name__})")
                if not done.done():
                    done.set_exception(error)
            elif pending == 0 and not done.done():
                done.set_result(None)

        for future in futures:
            future.add_done_callback(settled)
        if not futures:
            done.set_result(None)
        return done
