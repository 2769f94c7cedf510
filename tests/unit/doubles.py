"""Stand-ins for the Kafka side of the publisher, written to the Protocols of bridge/kafka/seams.py
so that they type-check where the real supervisor and producer are expected."""
from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from bridge.kafka.seams import Batch, Client, Cluster, Headers, Producer
from bridge.records import Record


class Partitions:
    """Every topic has `count` partitions."""

    def __init__(self, count: int) -> None:
        self.count = count

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return set(range(self.count))


class StandIn:
    """A producer whose every operation fails the test: a stand-in overrides those its test uses."""

    cluster: Cluster = Partitions(1)

    @property
    def client(self) -> Client:
        return self

    async def send(self, topic: str, value: bytes, *, key: bytes | None = None, headers: Headers | None = None,
                   partition: int | None = None) -> asyncio.Future[Any]:
        raise AssertionError("send is not expected here")

    async def partitions_for(self, topic: str) -> set[int]:
        raise AssertionError("partitions_for is not expected here")

    def create_batch(self) -> Batch:
        raise AssertionError("create_batch is not expected here")

    async def send_batch(self, batch: Batch, topic: str, *, partition: int) -> asyncio.Future[Any]:
        raise AssertionError("send_batch is not expected here")

    async def begin_transaction(self) -> None:
        raise AssertionError("begin_transaction is not expected here")

    async def commit_transaction(self) -> None:
        raise AssertionError("commit_transaction is not expected here")


class AckingProducer(StandIn):
    """An idempotent producer whose every record is acknowledged through `ack`, a future the test
    settles (a result, a Kafka error) or leaves pending; or `send` raises `refuse` at once."""

    def __init__(self) -> None:
        self.cluster = Partitions(3)
        self.ack: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.refuse: BaseException | None = None
        self.sent: list[tuple[str, bytes | None]] = []

    async def send(self, topic: str, value: bytes, *, key: bytes | None = None, headers: Headers | None = None,
                   partition: int | None = None) -> asyncio.Future[Any]:
        if self.refuse is not None:
            raise self.refuse
        self.sent.append((topic, key))
        return self.ack


def append_by_sending(producer: Any, records: Sequence[Record], partitions: Sequence[int]) -> list[asyncio.Future[Any]]:
    """The write path's append (bridge/kafka/appends.py) as the stand-ins take it: an AckingProducer
    records the push and acknowledges it through its `ack`, or refuses it at once with `refuse`."""
    assert isinstance(producer, AckingProducer)
    if producer.refuse is not None:
        raise producer.refuse
    producer.sent.extend((r.topic, r.key) for r in records)
    return [producer.ack]


class TransactionalProducer(StandIn):
    """Records what each transaction holds. `fail_commit` makes the next commit raise it."""

    def __init__(self) -> None:
        self.open: list[bytes] | None = None
        self.committed: list[list[bytes]] = []
        self.fail_commit: BaseException | None = None

    async def begin_transaction(self) -> None:
        assert self.open is None, "a transaction is already open"
        self.open = []

    async def send(self, topic: str, value: bytes, *, key: bytes | None = None, headers: Headers | None = None,
                   partition: int | None = None) -> asyncio.Future[Any]:
        assert self.open is not None, "a record sent outside a transaction"
        self.open.append(value)
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def commit_transaction(self) -> None:
        held, self.open = self.open, None
        assert held is not None
        if self.fail_commit is not None:
            error, self.fail_commit = self.fail_commit, None
            raise error
        self.committed.append(held)


class Keeper:
    """A supervisor whose state a test sets: `ready`, `problem`, the `producer`; it records the
    early checks and the producer replacements asked of it."""

    def __init__(self, producer: Producer | None = None, ready: bool = True, problem: str = "") -> None:
        self.producer = producer
        self.ready = ready
        self.problem = problem
        self.replacing = False
        self.checks_asked = 0
        self.replacements: list[str] = []
        self.started = self.stopped = self.closed = False

    def check_soon(self) -> None:
        self.checks_asked += 1

    def want_new_producer(self, why: str) -> None:
        self.replacing = True
        self.replacements.append(why)

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    async def close(self) -> None:
        self.closed = True
