"""TLS of the push port: TLS 1.2 or later, only suites with forward secrecy and AEAD, and a
certificate that can be replaced while the port serves.

The server listens with one SSL context for its whole life. A new certificate comes in a new
context, built and checked (key matching the certificate) before it is used; the listening
context's server-name callback, which OpenSSL calls for every ClientHello (with or without a
server name), then moves each new connection to the newest context. A connection keeps the
context it was given, so connections already open are not touched by a change.
"""
from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path

import uvicorn

# TLS 1.2 suites with forward secrecy and AEAD only; TLS 1.3 suites are always enabled.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20"


def server_context(certfile: Path, keyfile: Path) -> ssl.SSLContext:
    """A server context with the certificate chain and key of these files. Raises OSError
    (ssl.SSLError among them) when they cannot be used: unreadable, not PEM, or a key that does not
    match the certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.load_cert_chain(certfile, keyfile)
    return context


class Certificate:
    """The push port's certificate: `load()` builds a context from the files (in any thread),
    `use(context)` makes it the one new connections get (on the event loop)."""

    def __init__(self, certfile: Path, keyfile: Path) -> None:
        self.files = (certfile, keyfile)
        self._listening: ssl.SSLContext | None = None
        self._newest: ssl.SSLContext | None = None

    def load(self) -> ssl.SSLContext:
        return server_context(*self.files)

    def use(self, context: ssl.SSLContext) -> str:
        if self._listening is None:  # the first one: the server listens with it
            context.sni_callback = self._hand_over
            self._listening = context
        self._newest = context
        return "the certificate new connections get"

    def _hand_over(self, connection: ssl.SSLObject, server_name: str | None, context: ssl.SSLContext) -> None:
        newest = self._newest
        if newest is not None and newest is not context:
            connection.context = newest

    def context_factory(self, _config: uvicorn.Config, _default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        """uvicorn's ssl_context_factory: the listening context (after the first `use`)."""
        if self._listening is None:
            raise RuntimeError("the HTTPS certificate was not loaded before the server started")
        return self._listening
