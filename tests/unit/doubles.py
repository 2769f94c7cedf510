"""Stand-ins for the Kafka side of the publisher, written to the Protocols of bridge/kafka/seams.py
so that they type-check where the real supervisor and producer are expected."""
from __future__ import annotations

import asyncio
from typing import Any

from bridge.kafka.seams import Batch, Cluster, Headers, Producer


class NoBatches:
    def append(self, *, timestamp: int | None, key: bytes | None, value: bytes | None,
               headers: Headers) -> object | None:
        raise AssertionError("this producer takes no batches")


class Partitions:
    """Every topic has `count` partitions."""

    def __init__(self, count: int) -> None:
        self.count = count

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return set(range(self.count))


class TransactionalProducer:
    """Records what each transaction holds. `fail_commit` makes the next commit raise it."""

    def __init__(self) -> None:
        self.cluster: Cluster = Partitions(1)
        self.open: list[bytes] | None = None
        self.committed: list[list[bytes]] = []
        self.fail_commit: BaseException | None = None

    @property
    def client(self) -> TransactionalProducer:
        return self

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

    async def partitions_for(self, topic: str) -> set[int]:
        return set(range(1))

    def create_batch(self) -> Batch:
        return NoBatches()

    async def send_batch(self, batch: Batch, topic: str, *, partition: int) -> asyncio.Future[Any]:
        raise AssertionError("this producer takes no batches")


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
