"""The Kafka clients' credentials: one holder per process, built where the process is put together
(bridge/server.py, bridge/drain.py) and handed to whatever makes clients and to the file watcher."""
from __future__ import annotations

import ssl
from pathlib import Path

from aiokafka.helpers import create_ssl_context

from ..config import Settings


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
