"""The one Kafka producer of the process: ordered, acknowledged, bounded. The only Kafka I/O.

A small front over three parts, like aiokafka's own producer over its accumulator and sender:
- bridge.supervisor: connects, reconnects, checks the cluster's health, replaces the producer;
- bridge.writes: the idempotent writes (default mode): per-agent-locked appends for pushes, one
  batch per partition for the spool's drainer;
- bridge.transactions: atomic mode (BRIDGE_ATOMIC_PUSHES=true): whole pushes in transactions.
The write path is chosen once, when the publisher is built. Here every write is bounded in time, its failures become
PublishError, and what Kafka acknowledged is counted. While Kafka is known to be unhealthy, a write
fails at once instead of waiting for the bound.
"""
from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable

from aiokafka.errors import KafkaError

from .config import Settings
from .kafka.appends import append_push
from .kafka.credentials import Credentials
from .kafka.errors import RECORD_ERRORS, PublishError
from .kafka.seams import ProducerKeeper
from .metrics import Metrics
from .records import Record
from .supervisor import Supervisor
from .transactions import TransactionPump
from .writes import Append, Writes

__all__ = ["PublishError", "Publisher"]
Write = Callable[[list[Record]], Awaitable[None]]


class Publisher:
    """Built on the event loop it publishes from (it keeps that loop, so the publishing path never
    asks asyncio for it: in Python 3.11 each such call is a getpid() system call, and they add up to
    a fifth of a push's CPU). `keeper` keeps the producer: the bridge's Supervisor, made where the
    process is put together with the credentials the file watcher updates; without one, a
    Supervisor over credentials read once from the settings' files. `append` puts a push's records
    in the producer's batches (bridge/kafka/appends.py; tests stand in for it with the producer's)."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None,
                 keeper: ProducerKeeper | None = None, append: Append = append_push) -> None:
        self._settings = settings
        self._metrics = metrics = metrics or Metrics()
        self._supervisor = Supervisor(settings, metrics, Credentials(settings)) if keeper is None else keeper
        self._loop = loop = asyncio.get_running_loop()
        self._events_default = metrics.events.labels(settings.topic)
        self._pump: TransactionPump | None = None
        self._push: Write
        self._batch: Write
        if settings.atomic_pushes:
            self._pump = TransactionPump(self._supervisor, settings, loop)
            self._push = self._batch = self._pump.write
        else:
            writes = Writes(self._supervisor, loop, append)
            self._push, self._batch = writes.per_agent, writes.batched

    @property
    def problem(self) -> str:
        """Why Kafka cannot take pushes now ("" when it can)."""
        return "" if self.ready else self._supervisor.problem

    @property
    def ready(self) -> bool:
        """Kafka answered the last health check and every configured topic exists."""
        return self._supervisor.ready

    async def start(self) -> None:
        """Connect now if Kafka is there; either way keep supervising in the background."""
        await self._supervisor.start()
        if self._pump is not None:
            self._pump.start()

    async def stop(self) -> None:
        """Deliver what is buffered, then close (the producer's stop flushes). The supervisor stops
        first, so it cannot replace the producer while the pump ends."""
        await self._supervisor.stop()
        if self._pump is not None:
            await self._pump.stop()
        await self._supervisor.close()

    async def publish(self, records: list[Record], timeout: float | None = None) -> None:
        """Return once Kafka acknowledged every record of a push; raise PublishError otherwise
        (also when that takes longer than `timeout`, by default BRIDGE_PUBLISH_TIMEOUT_S)."""
        await self._write(self._push, records, timeout or self._settings.publish_timeout_s)

    async def publish_batch(self, records: list[Record], timeout: float | None = None) -> None:
        """`publish` for the spool's drainer, which publishes many pushes at once and is the only
        writer while it runs: one batch per partition, one future per batch rather than per record
        (in atomic mode, the same transactions as pushes)."""
        await self._write(self._batch, records, timeout or self._settings.publish_timeout_s)

    async def _write(self, write: Write, records: list[Record], timeout: float) -> None:
        """`await write(records)`, bounded by `timeout` (asyncio.timeout's logic, with the loop at
        hand), Kafka's errors turned into PublishError; counted once acknowledged."""
        started = time.monotonic()
        supervisor = self._supervisor
        if not supervisor.ready:
            raise PublishError(supervisor.problem)
        loop = self._loop
        task = asyncio.current_task(loop)
        assert task is not None  # a write runs in a task of the loop the publisher was built on
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            task.cancel()

        deadline = loop.call_later(timeout, expire)
        try:
            await write(records)
        except asyncio.CancelledError:
            if not expired or task.uncancel() > 0:  # cancelled from outside too: that wins
                raise
            supervisor.check_soon()
            raise PublishError(f"Kafka did not acknowledge within {timeout:g} s") from None
        except KafkaError as exc:
            supervisor.check_soon()
            raise PublishError(f"Kafka refused the events: {type(exc).__name__}",
                               isinstance(exc, RECORD_ERRORS)) from None
        finally:
            deadline.cancel()
        self._metrics.publish_seconds.observe(time.monotonic() - started)
        if self._settings.routes:
            for topic, count in Counter(r.topic for r in records).items():
                self._metrics.events.labels(topic).inc(count)
        else:
            self._events_default.inc(len(records))
