"""What Kafka's errors mean: for a push (PublishError, and which errors are about the records
themselves) and for an operator (`describe`)."""
from __future__ import annotations

import ssl

from aiokafka.errors import (
    CorruptRecordException,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
)

from ..config import Settings


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
