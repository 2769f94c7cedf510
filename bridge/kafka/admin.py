"""Topic administration and the cluster's health, each over a Kafka client of its own.

Health is checked over a client of its own, never over the producer's connections: a metadata
request queued behind produce requests parked on a failing broker says nothing about whether the
cluster can take pushes. After any failed check that client is discarded, so the next check
starts again from the bootstrap list, whatever brokers came and went meanwhile.

Borrowed from aiokafka (pinned to one minor release, checked by tests/unit/test_borrowed_names.py):
`aiokafka.conn.create_conn`, one connection that tells why a bootstrap failed, and the fields of
the admin client's create-topics answer (`topic_errors`: topic, error code, ...).
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka import AIOKafkaClient
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.conn import create_conn
from aiokafka.errors import KafkaConnectionError, KafkaError

from ..config import Settings
from .clients import client_options
from .credentials import Credentials
from .errors import describe

log = logging.getLogger("bridge.kafka")
CHECK_TIMEOUT_S = 3.0
TOPIC_EXISTS = 36


async def create_topics(settings: Settings, credentials: Credentials) -> None:
    admin = AIOKafkaAdminClient(**client_options(settings, credentials))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in settings.topics if t not in existing]
        if not missing:
            return
        # aiokafka annotates the answer as any Response; create_topics' own has topic_errors.
        response: Any = await admin.create_topics([
            NewTopic(t, settings.topic_partitions, settings.topic_replication_factor) for t in missing
        ])
        for topic, code, *rest in response.topic_errors:
            if code not in (0, TOPIC_EXISTS):
                raise KafkaError(f"creating topic {topic} failed with error {code}: {rest}")
        log.info("created topics %s with %d partitions", ", ".join(missing), settings.topic_partitions)
    finally:
        await admin.close()


async def diagnose(settings: Settings, credentials: Credentials) -> BaseException | None:
    """Connect to the first bootstrap server once and return what stops it (None if nothing)."""
    host, _, port = settings.kafka_bootstrap_servers.split(",")[0].strip().rpartition(":")
    options = client_options(settings, credentials)
    options.pop("bootstrap_servers")
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            conn = await create_conn(host.strip("[]"), int(port), **options)
    except (KafkaError, OSError, TimeoutError, ValueError) as exc:
        return exc
    conn.close()
    return None


class Health:
    """`check()` -> (problem, live broker ids): "" when the cluster answers and every topic exists."""

    def __init__(self, settings: Settings, credentials: Credentials) -> None:
        self._settings = settings
        self._credentials = credentials
        self._client: AIOKafkaClient | None = None

    async def check(self) -> tuple[str, set[int]]:
        settings = self._settings
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_S):
                if self._client is None:
                    self._client = AIOKafkaClient(**client_options(settings, self._credentials),
                                                  request_timeout_ms=int(CHECK_TIMEOUT_S * 1000))
                    await self._client.bootstrap()
                cluster = await self._client.fetch_all_metadata()
        except (KafkaError, OSError, TimeoutError) as exc:
            await self.close()
            cause: BaseException = exc
            if isinstance(exc, KafkaConnectionError):  # "unable to bootstrap" hides the cause
                cause = await diagnose(settings, self._credentials) or exc
            return describe(cause, settings), set()
        brokers = {b.nodeId for b in cluster.brokers()}
        missing = [t for t in settings.topics if t not in cluster.topics()]
        if missing:
            return f"Kafka topics missing: {', '.join(missing)}", brokers
        return "", brokers

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await asyncio.gather(client.close(), return_exceptions=True)
