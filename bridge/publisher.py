"""The one Kafka producer of the process: ordered, acknowledged, bounded. The only Kafka I/O.

- acks=all with the idempotent producer: the broker de-duplicates the producer's own retries and
  keeps their order, so what `publish` appends for a partition lands in that order.
- Per-agent order across pushes: a push appends all of its records while holding a lock per
  agent (record key). Appending is fast (a buffer copy); the wait for the broker's acknowledgement
  happens after the lock is released, so pushes of different agents, and consecutive pushes of
  one agent, share batches and acknowledgements instead of queueing behind each other.
- Bounded: the whole of `publish` (lock, append, acknowledgement) must finish within
  `publish_timeout_s`, otherwise it raises PublishError and the push is answered 503.
- Kafka unreachable at start: the process still serves; a background task keeps trying to
  connect and pushes are refused with 503 until it succeeds.
"""
from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack, asynccontextmanager
from typing import AsyncIterator, Iterable

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError
from aiokafka.helpers import create_ssl_context

from .config import Settings
from .records import Record

log = logging.getLogger("bridge.publisher")
RECONNECT_INTERVAL_S = 2.0
TOPIC_EXISTS = 36


class PublishError(Exception):
    """Kafka did not acknowledge every record in time; nothing is promised about the push."""


class KeyedLocks:
    """asyncio locks by key, created on demand and dropped when nobody holds or awaits them."""

    def __init__(self) -> None:
        self._locks: dict[bytes, tuple[asyncio.Lock, list[int]]] = {}

    @asynccontextmanager
    async def _one(self, key: bytes) -> AsyncIterator[None]:
        entry = self._locks.get(key)
        if entry is None:
            entry = self._locks[key] = (asyncio.Lock(), [0])
        lock, users = entry
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._locks[key]

    @asynccontextmanager
    async def hold(self, keys: Iterable[bytes]) -> AsyncIterator[None]:
        ordered = sorted(set(keys))  # one global order, so two pushes never deadlock
        if len(ordered) == 1:
            async with self._one(ordered[0]):
                yield
            return
        async with AsyncExitStack() as stack:
            for key in ordered:
                await stack.enter_async_context(self._one(key))
            yield

    def __len__(self) -> int:
        return len(self._locks)


def kafka_client_options(settings: Settings) -> dict:
    options: dict = {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "security_protocol": settings.kafka_security_protocol,
        "client_id": "cc-gateway-bridge",
    }
    if settings.kafka_security_protocol == "SSL":
        options["ssl_context"] = create_ssl_context(
            cafile=settings.kafka_ssl_cafile,
            certfile=settings.kafka_ssl_certfile,
            keyfile=settings.kafka_ssl_keyfile,
        )
    return options


class Publisher:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._producer: AIOKafkaProducer | None = None
        self._connecting: asyncio.Task | None = None
        self._locks = KeyedLocks()

    @property
    def connected(self) -> bool:
        return self._producer is not None

    async def start(self) -> None:
        """Connect now if Kafka is there; otherwise keep trying in the background."""
        if not await self._connect_once():
            self._connecting = asyncio.create_task(self._keep_connecting(), name="kafka-connect")

    async def _keep_connecting(self) -> None:
        while not await self._connect_once():
            await asyncio.sleep(RECONNECT_INTERVAL_S)

    async def _connect_once(self) -> bool:
        settings = self._settings
        producer = AIOKafkaProducer(
            **kafka_client_options(settings),
            acks="all",
            enable_idempotence=True,
            linger_ms=settings.kafka_linger_ms,
            max_request_size=max(1_048_576, settings.max_body_bytes + 65_536),
            request_timeout_ms=30_000,
        )
        try:
            await producer.start()
            if settings.create_topics:
                await self._create_topics()
            else:
                for topic in settings.topics:  # fail early, and warm the metadata cache
                    await producer.client._wait_on_metadata(topic)
        except (KafkaError, OSError) as exc:
            log.warning("Kafka at %s not usable yet (%s); retrying in %.0f s",
                        settings.kafka_bootstrap_servers, exc, RECONNECT_INTERVAL_S)
            await producer.stop()
            return False
        self._producer = producer
        log.info("connected to Kafka at %s; topics %s", settings.kafka_bootstrap_servers,
                 ", ".join(settings.topics))
        return True

    async def _create_topics(self) -> None:
        settings = self._settings
        admin = AIOKafkaAdminClient(**kafka_client_options(settings))
        await admin.start()
        try:
            existing = set(await admin.list_topics())
            missing = [t for t in settings.topics if t not in existing]
            if not missing:
                return
            response = await admin.create_topics([
                NewTopic(t, settings.topic_partitions, settings.topic_replication_factor) for t in missing
            ])
            for topic, code, *rest in response.topic_errors:
                if code not in (0, TOPIC_EXISTS):
                    raise KafkaError(f"creating topic {topic} failed with error {code}: {rest}")
            log.info("created topics %s with %d partitions", ", ".join(missing), settings.topic_partitions)
        finally:
            await admin.close()

    async def publish(self, records: list[Record]) -> None:
        """Return once Kafka acknowledged every record; raise PublishError otherwise."""
        producer = self._producer
        if producer is None:
            raise PublishError("Kafka is not reachable")
        try:
            async with asyncio.timeout(self._settings.publish_timeout_s):
                async with self._locks.hold(r.key for r in records):
                    acks = [await producer.send(r.topic, r.value, key=r.key, headers=r.headers)
                            for r in records]
                await asyncio.gather(*acks)
        except TimeoutError:
            raise PublishError(
                f"Kafka did not acknowledge within {self._settings.publish_timeout_s:g} s"
            ) from None
        except KafkaError as exc:
            raise PublishError(f"Kafka refused the events: {type(exc).__name__}") from None

    async def stop(self) -> None:
        """Deliver what is buffered, then close (the producer's stop flushes)."""
        if self._connecting is not None:
            self._connecting.cancel()
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
