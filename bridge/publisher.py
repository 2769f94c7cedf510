"""The one Kafka producer of the process: ordered, acknowledged, bounded. The only Kafka I/O.

Two delivery modes share everything but the last step:
- idempotent (default): acks=all with the idempotent producer. A push appends all of its records
  while holding a lock per agent (record key), then waits for the acknowledgements outside the
  lock, so consecutive pushes of one agent share batches and never interleave.
- atomic (BRIDGE_ATOMIC_PUSHES=true): pushes are queued to a single pump that writes the pushes
  which arrived within a few milliseconds inside one Kafka transaction. Consumers reading committed
  data never see part of a push; the queue is FIFO, so per-agent order needs no lock.

Health: a supervisor task connects (and keeps reconnecting while Kafka is away), checks every few
seconds that the brokers answer and the topics exist, and replaces the producer after any failed
batch, because the producer's sequence numbering cannot be trusted after a batch was given up.
While Kafka is known to be unhealthy, `publish` fails at once instead of waiting for the bound.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import time
from collections import Counter

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    CorruptRecordException,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
)
from aiokafka.partitioner import murmur2

from .config import Settings
from .kafka import Health, client_options, create_topics, describe
from .locks import KeyedLocks
from .metrics import Metrics
from .records import Record

log = logging.getLogger("bridge.publisher")
CHECK_INTERVAL_HEALTHY_S = 5.0
CHECK_INTERVAL_UNHEALTHY_S = 1.0
REQUEST_TIMEOUT_MS = 30_000
MAX_BATCH_BYTES = 256 * 1024  # per partition; aiokafka's 16 KB default splits a large push into many requests
TRANSACTION_TIMEOUT_MS = 15_000
# Errors about the records themselves: the same records can never be written.
RECORD_ERRORS = (MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError, CorruptRecordException)


class PublishError(Exception):
    """Kafka did not acknowledge every record in time; nothing is promised about the push.
    `refused_records`: Kafka refused the records themselves (too large, say), so sending them
    again can never succeed."""

    def __init__(self, message: str, refused_records: bool = False) -> None:
        super().__init__(message)
        self.refused_records = refused_records


def transactional_id(settings: Settings) -> str:
    """Stable per process slot, so a restarted bridge fences its predecessor's open transaction."""
    return settings.transactional_id or f"cc-bridge-{socket.gethostname()}-{settings.port}"


class Publisher:
    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self._settings = settings
        self._metrics = metrics or Metrics()
        self._producer: AIOKafkaProducer | None = None
        self._healthy = False
        self._problem = "Kafka is not reachable"
        self._reset_wanted = False
        self._check_now = asyncio.Event()
        self._health = Health(settings)
        self._supervisor: asyncio.Task | None = None
        self._locks = KeyedLocks()
        self._events_default = self._metrics.events.labels(settings.topic)
        self._queue: list[tuple[list[Record], asyncio.Future]] = []
        self._queue_ready = asyncio.Event()
        self._pump: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def problem(self) -> str:
        """Why Kafka cannot take pushes now ("" when it can)."""
        return "" if self.ready else self._problem

    @property
    def ready(self) -> bool:
        """Kafka answered the last health check and every configured topic exists."""
        return self._healthy and self._producer is not None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect now if Kafka is there; either way keep supervising in the background."""
        # Kept, so the publishing path never asks asyncio for the running loop: in Python 3.11
        # each such call is a getpid() system call, and they add up to a fifth of a push's CPU.
        self._loop = asyncio.get_running_loop()
        await self._connect()
        self._supervisor = asyncio.create_task(self._supervise(), name="kafka-supervisor")
        if self._settings.atomic_pushes:
            self._pump = asyncio.create_task(self._run_pump(), name="kafka-transactions")

    async def stop(self) -> None:
        """Deliver what is buffered, then close (the producer's stop flushes)."""
        for task in (self._supervisor, self._pump):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        for _, done in self._queue:
            if not done.done():
                done.set_exception(PublishError("the bridge is shutting down"))
        await self._health.close()
        await self._drop_producer()

    async def _supervise(self) -> None:
        while True:
            interval = CHECK_INTERVAL_HEALTHY_S if self._healthy else CHECK_INTERVAL_UNHEALTHY_S
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._check_now.wait(), interval)
            self._check_now.clear()
            if self._reset_wanted:
                await self._drop_producer()
            if self._producer is None:
                await self._connect()
            else:
                await self._check()

    def _new_producer(self) -> AIOKafkaProducer:
        settings = self._settings
        options = dict(
            **client_options(settings),
            acks="all",
            enable_idempotence=True,
            linger_ms=settings.kafka_linger_ms,
            max_batch_size=MAX_BATCH_BYTES,
            max_request_size=max(1_048_576, settings.max_body_bytes + 65_536),
            request_timeout_ms=REQUEST_TIMEOUT_MS,
        )
        if settings.atomic_pushes:
            options.update(transactional_id=transactional_id(settings),
                           transaction_timeout_ms=TRANSACTION_TIMEOUT_MS)
        return AIOKafkaProducer(**options)

    async def _connect(self) -> None:
        """A new producer, once the health check says the cluster answers (a producer started
        against an unreachable or refusing cluster only fails slowly)."""
        settings = self._settings
        await self._check()
        if self._problem.startswith("Kafka topics missing") and settings.create_topics:
            try:
                await create_topics(settings)
            except (KafkaError, OSError, TimeoutError) as exc:
                self._set_health(False, f"creating the topics failed ({describe(exc, settings)})")
                return
        elif not self._healthy:
            return
        producer = self._new_producer()
        try:
            await asyncio.wait_for(producer.start(), REQUEST_TIMEOUT_MS / 1000)
        except (KafkaError, OSError, TimeoutError) as exc:
            await asyncio.gather(producer.stop(), return_exceptions=True)
            self._set_health(False, describe(exc, settings))
            return
        self._producer = producer
        self._reset_wanted = False
        log.info("connected to Kafka at %s", settings.kafka_bootstrap_servers)
        for _ in range(25):  # topics just created take a moment to appear in metadata
            await self._check(quiet=True)
            if self._healthy:
                return
            await asyncio.sleep(0.2)
        await self._check()

    async def _drop_producer(self) -> None:
        producer, self._producer = self._producer, None
        self._set_health(False, "Kafka producer is being replaced")
        self._reset_wanted = False
        if producer is not None:
            try:
                await asyncio.wait_for(producer.stop(), REQUEST_TIMEOUT_MS / 1000 + 5)
            except (KafkaError, OSError, TimeoutError) as exc:
                log.warning("Kafka producer did not close cleanly: %s", type(exc).__name__)

    async def _check(self, quiet: bool = False) -> None:
        problem, live = await self._health.check()
        self._set_health(not problem, problem, quiet)
        producer = self._producer
        if not problem and producer is not None and not self._reset_wanted:
            known = {b.nodeId for b in producer.client.cluster.brokers()}
            if known and not known & live:  # its metadata names only brokers that are gone
                self._want_new_producer("the producer knows only brokers that left the cluster")

    def _set_health(self, healthy: bool, problem: str = "Kafka is not reachable", quiet: bool = False) -> None:
        if not quiet and (healthy != self._healthy or problem != self._problem):  # changes only: no flood
            if healthy:
                log.info("Kafka is reachable and every topic exists")
            elif "SASL" in problem or "TLS" in problem:
                log.error("Kafka is not usable: %s", problem)
            else:
                log.warning("Kafka is not usable: %s", problem)
        self._healthy, self._problem = healthy, problem
        self._metrics.kafka_connected.set(1 if healthy else 0)

    def _acknowledged(self, futures: list[asyncio.Future]) -> asyncio.Future:
        """One future for all of a push's acknowledgements, failing with the first error. A failed
        batch asks for a new producer whatever becomes of the push's waiter (which may time out:
        cancelling this future leaves the producer's own futures alone)."""
        done = self._loop.create_future()
        pending = len(futures)

        def settled(future: asyncio.Future) -> None:
            nonlocal pending
            pending -= 1
            error = None if future.cancelled() else future.exception()
            if error is not None:
                if not self._reset_wanted:
                    self._want_new_producer(f"Kafka rejected a batch ({type(error).__name__})")
                if not done.done():
                    done.set_exception(error)
            elif pending == 0 and not done.done():
                done.set_result(None)

        for future in futures:
            future.add_done_callback(settled)
        if not futures:
            done.set_result(None)
        return done

    def _want_new_producer(self, why: str) -> None:
        log.warning("%s: the producer will be replaced", why)
        self._reset_wanted = True
        self._check_now.set()

    # -- publishing --------------------------------------------------------------------------

    async def publish(self, records: list[Record], timeout: float | None = None, batched: bool = False) -> None:
        """Return once Kafka acknowledged every record; raise PublishError otherwise (also when
        that takes longer than `timeout`, by default BRIDGE_PUBLISH_TIMEOUT_S).

        `batched` (for the spool's drainer, which publishes many pushes at once and is the only
        writer while it runs): the records go in one batch per partition, one future per batch
        rather than per record. Ignored in atomic mode."""
        started = time.monotonic()
        if self._settings.atomic_pushes:
            body = self._publish_in_transaction
        else:
            body = self._publish_batched if batched else self._publish_idempotent
        await self._write(body, records, timeout or self._settings.publish_timeout_s)
        self._metrics.publish_seconds.observe(time.monotonic() - started)
        if self._settings.routes:
            for topic, count in Counter(r.topic for r in records).items():
                self._metrics.events.labels(topic).inc(count)
        else:
            self._events_default.inc(len(records))

    async def _write(self, body, records: list[Record], timeout: float) -> None:
        """`await body(records)`, bounded by `timeout` (asyncio.timeout's logic, with the loop at
        hand), Kafka's errors turned into PublishError."""
        if not self.ready:
            raise PublishError(self._problem)
        loop = self._loop
        task = asyncio.current_task(loop)
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            task.cancel()

        deadline = loop.call_later(timeout, expire)
        try:
            await body(records)
        except asyncio.CancelledError:
            if not expired or task.uncancel() > 0:  # cancelled from outside too: that wins
                raise
            self._check_now.set()
            raise PublishError(f"Kafka did not acknowledge within {timeout:g} s") from None
        except KafkaError as exc:
            self._check_now.set()
            raise PublishError(f"Kafka refused the events: {type(exc).__name__}",
                               isinstance(exc, RECORD_ERRORS)) from None
        finally:
            deadline.cancel()

    async def _publish_idempotent(self, records: list[Record]) -> None:
        producer = self._producer
        partitions = self._partitions_of(producer, records)
        async with self._locks.hold(r.key for r in records if r.key is not None):
            futures = [await producer.send(r.topic, r.value, key=r.key, headers=r.headers, partition=p)
                       for r, p in zip(records, partitions, strict=False)]
        await self._acknowledged(futures)

    async def _publish_batched(self, records: list[Record]) -> None:
        producer = self._producer
        cluster = producer.client.cluster
        builders: dict[tuple[str, int], object] = {}
        futures = []
        for r, partition in zip(records, self._partitions_of(producer, records), strict=False):
            if partition is None:  # no key (a dead letter): any partition
                partition = random.choice(sorted(cluster.partitions_for_topic(r.topic) or (0,)))
            builder = builders.get((r.topic, partition))
            if builder is None or builder.append(timestamp=None, key=r.key, value=r.value, headers=r.headers) is None:
                if builder is not None:  # full: send it, start the next one
                    futures.append(await producer.send_batch(builder, r.topic, partition=partition))
                builder = builders[(r.topic, partition)] = producer.create_batch()
                builder.append(timestamp=None, key=r.key, value=r.value, headers=r.headers)  # fits an empty batch
        for (topic, partition), builder in builders.items():
            futures.append(await producer.send_batch(builder, topic, partition=partition))
        await self._acknowledged(futures)

    @staticmethod
    def _partitions_of(producer: AIOKafkaProducer, records: list[Record]) -> list[int | None]:
        """Kafka's default partitioning (the Java client's murmur2 rule), once per distinct key and
        topic of the push rather than once per record; None leaves the choice to the producer
        (a topic whose metadata is not known yet)."""
        cluster, chosen, result = producer.client.cluster, {}, []
        for r in records:
            partition = chosen.get((r.topic, r.key), -1)
            if partition == -1 and r.key is None:
                partition = None  # no key: the producer spreads such records itself
            elif partition == -1:
                count = len(cluster.partitions_for_topic(r.topic) or ())
                partition = chosen[(r.topic, r.key)] = (murmur2(r.key) & 0x7FFFFFFF) % count if count else None
            result.append(partition)
        return result

    async def _publish_in_transaction(self, records: list[Record]) -> None:
        done = asyncio.get_running_loop().create_future()
        self._queue.append((records, done))
        self._queue_ready.set()
        try:
            await asyncio.shield(done)
        except asyncio.CancelledError:
            done.cancel()  # timed out: a transaction not yet begun will skip this push
            raise

    async def _run_pump(self) -> None:
        """Write queued pushes, a group at a time, each group in one transaction."""
        while True:
            await self._queue_ready.wait()
            self._queue_ready.clear()
            await asyncio.sleep(self._settings.kafka_linger_ms / 1000)  # let a group gather
            group = [(records, done) for records, done in self._queue if not done.done()]
            self._queue.clear()
            if not group:
                continue
            producer = self._producer
            try:
                if producer is None or not self._healthy:
                    raise PublishError(self._problem)
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
                        self._want_new_producer(f"Kafka transaction failed ({type(exc).__name__})")
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

