"""What the write paths (bridge/writes.py, bridge/transactions.py) and the publisher need of a Kafka
producer and of the part that keeps it, as Protocols. The bridge runs with aiokafka's producer and
bridge.supervisor.Supervisor; tests stand in for them with small classes of their own."""
from __future__ import annotations

import asyncio
from typing import Any, Protocol

Headers = list[tuple[str, bytes]]


class Cluster(Protocol):
    def partitions_for_topic(self, topic: str) -> set[int] | None:
        """The topic's partitions, None while its metadata is not known."""


class Client(Protocol):
    @property
    def cluster(self) -> Cluster: ...


class Batch(Protocol):
    """A batch of records for one partition, filled before it is sent."""

    def append(self, *, timestamp: int | None, key: bytes | None, value: bytes | None,
               headers: Headers) -> object | None:
        """Add a record; None when the batch is full."""


class Producer(Protocol):
    """The parts of aiokafka's producer the write paths use."""

    @property
    def client(self) -> Client: ...

    async def send(self, topic: str, value: bytes, *, key: bytes | None = None, headers: Headers | None = None,
                   partition: int | None = None) -> asyncio.Future[Any]:
        """Append one record; the future is done once Kafka acknowledged it."""

    async def partitions_for(self, topic: str) -> set[int]:
        """The topic's partitions, asking the cluster if they are not known yet."""

    def create_batch(self) -> Batch: ...

    async def send_batch(self, batch: Batch, topic: str, *, partition: int) -> asyncio.Future[Any]:
        """Queue a whole batch; the future is done once Kafka acknowledged it."""

    async def begin_transaction(self) -> None: ...

    async def commit_transaction(self) -> None: ...


class ProducerKeeper(Protocol):
    """What keeps the producer (bridge.supervisor.Supervisor), as the publisher and its write paths
    see it."""

    @property
    def producer(self) -> Producer | None:
        """The producer to write with; None while there is none."""

    @property
    def ready(self) -> bool:
        """Whether pushes can be written now."""

    @property
    def problem(self) -> str:
        """Why not, when they cannot."""

    @property
    def replacing(self) -> bool:
        """A new producer was asked for and is not there yet."""

    def check_soon(self) -> None:
        """Check the cluster now rather than at the next interval."""

    def want_new_producer(self, why: str) -> None:
        """Replace the producer (its sequence numbers cannot be trusted after a failed batch)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def close(self) -> None: ...
