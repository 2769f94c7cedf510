"""The drainer's batched write names each batch's partition itself: it must be the key's own
partition even when the producer is new and knows no metadata yet (after a broker restart)."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

from aiokafka.partitioner import DefaultPartitioner

from bridge.records import Record
from bridge.writes import Writes


class NewProducer:
    """A producer as aiokafka makes it: no topic known until metadata is asked for."""

    def __init__(self, partitions: int) -> None:
        self.known: dict[str, set[int]] = {}
        self.client = SimpleNamespace(cluster=SimpleNamespace(partitions_for_topic=self.known.get))
        self.partitions = partitions
        self.sent: list[tuple[int, list[bytes | None]]] = []

    async def partitions_for(self, topic: str) -> set[int]:
        await asyncio.sleep(0)  # the metadata request
        self.known[topic] = set(range(self.partitions))
        return self.known[topic]

    def create_batch(self) -> SimpleNamespace:
        keys: list[bytes | None] = []
        return SimpleNamespace(keys=keys, append=lambda **kw: keys.append(kw["key"]) or True)

    async def send_batch(self, batch: SimpleNamespace, topic: str, partition: int) -> asyncio.Future[None]:
        self.sent.append((partition, batch.keys))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


async def test_batched_waits_for_metadata_before_choosing_partitions():
    producer = NewProducer(partitions=12)
    supervisor = SimpleNamespace(producer=producer, replacing=False)
    writes = Writes(supervisor, asyncio.get_running_loop())  # type: ignore[arg-type]
    keys = [str(n).encode() for n in range(100001, 100041)]
    await writes.batched([Record("t", key, b"{}", []) for key in keys])
    partitioner = DefaultPartitioner()
    placed = {key: partition for partition, batch in producer.sent for key in batch}
    assert placed == {key: partitioner(key, list(range(12)), list(range(12))) for key in keys}
    assert len({p for p, _ in producer.sent}) > 1, "every agent on one partition"
