"""Atomic mode (BRIDGE_ATOMIC_PUSHES=true): whole pushes in Kafka transactions.

Writes are queued to a single pump, which writes the pushes that arrived within a few milliseconds
(BRIDGE_KAFKA_LINGER_MS) inside one transaction. Consumers reading committed data never see part of
a push; the queue is first in, first out, so per-agent order needs no lock. A failed transaction
fails every push of its group and abandons the producer: the supervisor's next one, registering with
the same transactional id, aborts whatever the old one left open.
"""
from __future__ import annotations

import asyncio

from aiokafka.errors import KafkaError

from .config import Settings
from .kafka.errors import PublishError
from .kafka.seams import ProducerKeeper
from .records import Record


class TransactionPump:
    """`write(records)` returns once the transaction holding the records is committed. `loop` is the
    running loop, kept so that no write asks asyncio for it."""

    def __init__(self, supervisor: ProducerKeeper, settings: Settings, loop: asyncio.AbstractEventLoop) -> None:
        self._supervisor = supervisor
        self._settings = settings
        self._loop = loop
        self._queue: list[tuple[list[Record], asyncio.Future[None]]] = []
        self._queue_ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="kafka-transactions")

    async def stop(self) -> None:
        """Stop the pump; pushes still queued fail."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for _, done in self._queue:
            if not done.done():
                done.set_exception(PublishError("the bridge is shutting down"))

    async def write(self, records: list[Record]) -> None:
        done = self._loop.create_future()
        self._queue.append((records, done))
        self._queue_ready.set()
        try:
            await asyncio.shield(done)
        except asyncio.CancelledError:
            done.cancel()  # timed out: a transaction not yet begun will skip this push
            raise

    async def _run(self) -> None:
        """Write queued pushes, a group at a time, each group in one transaction."""
        while True:
            await self._queue_ready.wait()
            self._queue_ready.clear()
            await asyncio.sleep(self._settings.kafka_linger_ms / 1000)  # let a group gather
            group = [(records, done) for records, done in self._queue if not done.done()]
            self._queue.clear()
            if not group:
                continue
            supervisor = self._supervisor
            producer = supervisor.producer
            try:
                if producer is None or not supervisor.ready:
                    raise PublishError(supervisor.problem)
                async with asyncio.timeout(self._settings.publish_timeout_s):
                    await producer.begin_transaction()
                    try:
                        for records, _ in group:
                            for r in records:
                                await producer.send(r.topic, r.value, key=r.key, headers=r.headers)
                        await producer.commit_transaction()
                    except BaseException as exc:
                        # An open or half-committed transaction is abandoned with its producer:
                        # the next one, with the same transactional id, aborts it on registering.
                        supervisor.want_new_producer(f"Kafka transaction failed ({type(exc).__name__})")
                        raise
            except (KafkaError, PublishError, TimeoutError) as exc:
                error = PublishError(f"Kafka transaction failed: {type(exc).__name__}")
                for _, done in group:
                    if not done.done():
                        done.set_exception(error)
                continue
            for _, done in group:
                if not done.done():
                    done.set_result(None)
