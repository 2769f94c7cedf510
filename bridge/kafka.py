"""The bridge's view of the Kafka cluster: client settings, topic creation, health checks, what its
errors mean, and the one change made to aiokafka at run time.

Health is checked over a client of its own, never over the producer's connections: a metadata
request queued behind produce requests parked on a failing broker says nothing about whether the
cluster can take pushes. After any failed check that client is discarded, so the next check
starts again from the bootstrap list, whatever brokers came and went meanwhile.
"""
from __future__ import annotations

import asyncio
import logging
import ssl
import sys
from pathlib import Path
from typing import Any

import aiokafka.util
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.client import AIOKafkaClient
from aiokafka.conn import create_conn
from aiokafka.errors import (
    CorruptRecordException,
    KafkaConnectionError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
)
from aiokafka.helpers import create_ssl_context

from .config import Settings

log = logging.getLogger("bridge.kafka")
CHECK_TIMEOUT_S = 3.0
TOPIC_EXISTS = 36


class Credentials:
    """The Kafka clients' TLS context (from the BRIDGE_KAFKA_SSL_* files) and SASL password (from
    BRIDGE_KAFKA_SASL_PASSWORD_FILE), as last read. bridge/watch.py reads the files again when they
    change and hands over versions that work (`use_tls`, `use_password`); a client takes what is
    here when it is made. aiokafka keeps a client's TLS context and password for its whole life (for
    every connection it opens, reconnections included), so a change reaches Kafka with the next
    client: the producer the supervisor makes after a failure, the health check's client after a
    failed check, the admin client at start."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._ssl_context: ssl.SSLContext | None = None
        self.password = settings.kafka_sasl_password  # read from its file at start by bridge.config

    @property
    def tls_files(self) -> tuple[Path, ...]:
        s = self._settings
        if s.kafka_security_protocol not in ("SSL", "SASL_SSL"):
            return ()
        return tuple(p for p in (s.kafka_ssl_cafile, s.kafka_ssl_certfile, s.kafka_ssl_keyfile) if p is not None)

    @property
    def password_file(self) -> Path | None:
        return self._settings.kafka_sasl_password_file if self._settings.kafka_sasl_mechanism else None

    @property
    def ssl_context(self) -> ssl.SSLContext | None:
        if self._settings.kafka_security_protocol not in ("SSL", "SASL_SSL"):
            return None
        if self._ssl_context is None:  # nothing good read yet: try now (raises OSError if the files are broken)
            self._ssl_context = self.load_tls()
        return self._ssl_context

    def load_tls(self) -> ssl.SSLContext:
        """A context from the files; raises OSError (ssl.SSLError among them) if they cannot be used."""
        s = self._settings
        context: ssl.SSLContext = create_ssl_context(cafile=s.kafka_ssl_cafile, certfile=s.kafka_ssl_certfile,
                                                     keyfile=s.kafka_ssl_keyfile)
        return context

    def use_tls(self, context: ssl.SSLContext) -> str:
        self._ssl_context = context
        return "for the Kafka clients made from now on"

    def load_password(self) -> str:
        path = self.password_file
        assert path is not None
        password = path.read_text(encoding="utf-8").rstrip("\r\n")
        if not password:
            raise ValueError("the file is empty")
        return password

    def use_password(self, password: str) -> str:
        self.password = password
        return "for the Kafka clients made from now on"


_credentials: dict[Settings, Credentials] = {}


def credentials(settings: Settings) -> Credentials:
    """The process's Kafka credentials for these settings (one holder per settings)."""
    found = _credentials.get(settings)
    if found is None:
        found = _credentials[settings] = Credentials(settings)
    return found


def client_options(settings: Settings) -> dict[str, Any]:
    """Connection settings shared by every Kafka client of the process (producer, admin, health),
    with the credentials as they are now (see Credentials)."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "security_protocol": settings.kafka_security_protocol,
        "client_id": "cc-gateway-bridge",
    }
    current = credentials(settings)
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = current.ssl_context
    if settings.kafka_sasl_mechanism is not None:
        # aiokafka names both fields "plain" but uses them for SCRAM as well.
        options.update(sasl_mechanism=settings.kafka_sasl_mechanism,
                       sasl_plain_username=settings.kafka_sasl_username,
                       sasl_plain_password=current.password)
    return options


def describe(exc: BaseException, settings: Settings) -> str:
    """What went wrong, in words an operator can act on."""
    name = type(exc).__name__
    if "Sasl" in name or "Authentication" in name:
        return (f"Kafka refused the SASL login of {settings.kafka_sasl_username!r} with "
                f"{settings.kafka_sasl_mechanism} ({name}): check BRIDGE_KAFKA_SASL_USERNAME and the password")
    if isinstance(exc, ssl.SSLError):
        return f"the TLS handshake with Kafka failed ({exc.reason or name}): check BRIDGE_KAFKA_SSL_*"
    return f"Kafka is not reachable ({name})"


# Errors about the records themselves: the same records can never be written.
RECORD_ERRORS = (MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError, CorruptRecordException)


class PublishError(Exception):
    """Kafka did not acknowledge every record in time; nothing is promised about the push.
    `refused_records`: Kafka refused the records themselves (too large, say), so sending them
    again can never succeed."""

    def __init__(self, message: str, refused_records: bool = False) -> None:
        super().__init__(message)
        self.refused_records = refused_records


async def create_topics(settings: Settings) -> None:
    admin = AIOKafkaAdminClient(**client_options(settings))
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


async def diagnose(settings: Settings) -> BaseException | None:
    """Connect to the first bootstrap server once and return what stops it (None if nothing)."""
    host, _, port = settings.kafka_bootstrap_servers.split(",")[0].strip().rpartition(":")
    options = client_options(settings)
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

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._client: AIOKafkaClient | None = None

    async def check(self) -> tuple[str, set[int]]:
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_S):
                if self._client is None:
                    self._client = AIOKafkaClient(**client_options(self._settings),
                                                  request_timeout_ms=int(CHECK_TIMEOUT_S * 1000))
                    await self._client.bootstrap()
                cluster = await self._client.fetch_all_metadata()
        except (KafkaError, OSError, TimeoutError) as exc:
            await self.close()
            cause: BaseException = exc
            if isinstance(exc, KafkaConnectionError):  # "unable to bootstrap" hides the cause
                cause = await diagnose(self._settings) or exc
            return describe(cause, self._settings), set()
        brokers = {b.nodeId for b in cluster.brokers()}
        missing = [t for t in self._settings.topics if t not in cluster.topics()]
        if missing:
            return f"Kafka topics missing: {', '.join(missing)}", brokers
        return "", brokers

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await asyncio.gather(client.close(), return_exceptions=True)


def give_aiokafka_the_loop(loop: asyncio.AbstractEventLoop) -> None:
    """aiokafka makes a future for every record it is sent, asking asyncio for the running loop
    each time (aiokafka.util.get_running_loop). Before Python 3.12, asyncio answers that with a
    getpid() system call, to notice a fork: measured at 18% of the bridge's CPU at saturation. The
    bridge serves from one loop for its whole life and never forks, so aiokafka gets that loop
    directly. Later Pythons dropped the check, and nothing is changed there."""
    if sys.version_info < (3, 12):
        aiokafka.util.get_running_loop = lambda: loop
