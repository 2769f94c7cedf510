"""The drainer's batched write names each batch's partition itself: it must be the key's own
partition even when the producer is new and knows no metadata yet (after a broker restart)."""
from __future__ import annotations

import asyncio
from typing import Any

from aiokafka.partitioner import DefaultPartitioner
from doubles import Keeper, StandIn

from bridge.kafka.seams import Batch, Headers
from bridge.records import Record
from bridge.writes import Writes


class KeysBatch:
    """A batch that keeps the keys appended to it."""

    def __init__(self) -> None:
        self.keys: list[bytes | None] = []

    def append(self, *, timestamp: int | None, key: bytes | None, value: bytes | None,
               headers: Headers) -> object | None:
        self.keys.append(key)
        return True


class Metadata:
    """What the producer knows of the cluster: nothing, until it asks."""

    def __init__(self) -> None:
        self.known: dict[str, set[int]] = {}

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return self.known.get(topic)


class NewProducer(StandIn):
    """A producer as aiokafka makes it: no topic known until metadata is asked for."""

    def __init__(self, partitions: int) -> None:
        self.metadata = Metadata()
        self.cluster = self.metadata
        self.partitions = partitions
        self.sent: list[tuple[int, list[bytes | None]]] = []

    async def partitions_for(self, topic: str) -> set[int]:
        await asyncio.sleep(0)  # the metadata request
        self.metadata.known[topic] = set(range(self.partitions))
        return self.metadata.known[topic]

    def create_batch(self) -> KeysBatch:
        return KeysBatch()

    async def send_batch(self, batch: Batch, topic: str, *, partition: int) -> asyncio.Future[Any]:
        assert isinstance(batch, KeysBatch)
        self.sent.append((partition, batch.keys))
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


async def test_batched_waits_for_metadata_before_choosing_partitions() -> None:
    producer = NewProducer(partitions=12)
    writes = Writes(Keeper(producer), asyncio.get_running_loop())
    keys = [str(n).encode() for n in range(100001, 100041)]
    await writes.batched([Record("t", key, b"{}", []) for key in keys])
    partitioner = DefaultPartitioner()
    placed = {key: partition for partition, batch in producer.sent for key in batch}
    assert placed == {key: partitioner(key, list(range(12)), list(range(12))) for key in keys}
    assert len({p for p, _ in producer.sent}) > 1, "every agent on one partition"
