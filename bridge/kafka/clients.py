"""How the bridge's Kafka clients are made: the connection options they all share, with the
credentials in service when a client is made, and the producer's own settings."""
from __future__ import annotations

import socket
from typing import Any

from aiokafka import AIOKafkaProducer

from ..config import Settings
from .credentials import Credentials

REQUEST_TIMEOUT_MS = 30_000
MAX_BATCH_BYTES = 256 * 1024  # per partition; aiokafka's 16 KB default splits a large push into many requests
TRANSACTION_TIMEOUT_MS = 15_000


def client_options(settings: Settings, credentials: Credentials) -> dict[str, Any]:
    """Connection settings shared by every Kafka client of the process (producer, admin, health),
    with the credentials as they are now (see Credentials)."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "security_protocol": settings.kafka_security_protocol,
        "client_id": "cc-gateway-bridge",
    }
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = credentials.ssl_context
    if settings.kafka_sasl_mechanism is not None:
        # aiokafka names both fields "plain" but uses them for SCRAM as well.
        options.update(sasl_mechanism=settings.kafka_sasl_mechanism,
                       sasl_plain_username=settings.kafka_sasl_username,
                       sasl_plain_password=credentials.password)
    return options


def transactional_id(settings: Settings) -> str:
    """Stable per process slot, so a restarted bridge fences its predecessor's open transaction."""
    return settings.transactional_id or f"cc-bridge-{socket.gethostname()}-{settings.port}"


def new_producer(settings: Settings, credentials: Credentials) -> AIOKafkaProducer:
    """acks=all and idempotent; transactional in atomic mode."""
    options = dict(
        **client_options(settings, credentials),
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
