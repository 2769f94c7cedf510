"""The listening side of the bridge's two ports: uvicorn's server opening its listener itself, and,
on the HTTPS port, each connection counted from accept and taken through its TLS handshake within
a deadline before its HTTP protocol (bridge/http.py) gets it.

Borrowed from uvicorn (pinned to one minor release; tests/unit/test_borrowed_names.py checks each
name): `Server.startup` and `Server.shutdown` are replaced or extended, and `startup` does what
uvicorn's own does before it serves (`lifespan.startup()`, `lifespan.should_exit`, `lifespan.state`,
`server_state`, `servers`, `started`, exiting with `uvicorn.config.STARTUP_FAILURE`), because
uvicorn's opens the listener with the TLS context handed to the event loop, which gives a handshake
no deadline of its own and counts a connection only once it is encrypted. `capture_signals` and
`handle_exit` are uvicorn's signal handling, kept off on all but one server of the process. From
asyncio: a task's handling of the futures a coroutine waits for (`_asyncio_future_blocking`), which
TlsHandshake repeats to drive the loop's start_tls within the accepting callback.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, cast

import uvicorn
from starlette.types import ASGIApp
from uvicorn.config import STARTUP_FAILURE

from . import config, tls
from .connections import HANDSHAKE, Limits
from .http import BoundedProtocol, BridgeConfig

log = logging.getLogger("bridge")


def push_config(settings: config.Settings, app: ASGIApp, certificate: tls.Certificate | None = None) -> BridgeConfig:
    """The push server's uvicorn settings: HTTPS with `certificate` (replaceable while serving)
    unless BRIDGE_INSECURE_HTTP, the head bound."""
    https: dict[str, Any] = {}
    if certificate is not None:
        https = {"ssl_context_factory": certificate.context_factory}
    return BridgeConfig(
        app,
        name="push",
        max_header_bytes=settings.max_header_bytes,
        limits=Limits(settings.max_connections, settings.tls_handshake_timeout_s, settings.head_timeout_s,
                      settings.body_timeout_s, settings.body_min_bytes_per_s, settings.keepalive_timeout_s),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        lifespan="on",
        access_log=False,
        server_header=False,
        proxy_headers=False,  # nothing reads forwarded addresses; TLS ends here
        log_config=None,
        timeout_graceful_shutdown=settings.shutdown_timeout_s,  # an asyncio timeout: fractions work
        **https,
    )


MANAGEMENT_KEEPALIVE_S = 5.0  # scrapers and probes come back within seconds or open a new connection


def management_config(settings: config.Settings, app: ASGIApp) -> BridgeConfig:
    """/healthz, /readyz and /metrics: plain HTTP on their own address and port, no lifespan; the
    push port's deadlines, their own bound."""
    limits = Limits(settings.management_max_connections, settings.tls_handshake_timeout_s, settings.head_timeout_s,
                    settings.body_timeout_s, settings.body_min_bytes_per_s, MANAGEMENT_KEEPALIVE_S)
    return BridgeConfig(app, name="management", max_header_bytes=settings.max_header_bytes, limits=limits,
                        host=settings.management_host, port=settings.management_port, loop="uvloop",
                        lifespan="off", access_log=False, server_header=False, log_config=None)


class TlsHandshake(asyncio.Protocol):
    """The first protocol of every connection to an HTTPS port: it counts the connection in the
    port's table (which may refuse it, or close another to make room), then runs the TLS handshake
    within the handshake deadline and hands the connection, encrypted, to its HTTP protocol."""

    __slots__ = ("_config", "_handshake", "_http", "_loop", "_make_http", "_tcp")

    def __init__(self, make_http: Callable[[], BoundedProtocol], config: BridgeConfig,
                 loop: asyncio.AbstractEventLoop) -> None:
        self._make_http, self._config, self._loop = make_http, config, loop

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        tcp = self._tcp = cast(asyncio.Transport, transport)
        http = self._http = self._make_http()
        if not self._config.connections.admit(http, HANDSHAKE):
            tcp.abort()
            return
        http.tcp = tcp
        timeout = self._config.limits.handshake_timeout_s
        assert self._config.ssl is not None
        # start_tls puts the TLS layer in this protocol's place; the layer keeps what arrives until
        # its handshake begins. That must happen before this method returns, since the loop starts
        # reading the connection right after: a task would take its first step a loop turn later,
        # and the client's first handshake bytes could reach this object and be lost. So the
        # coroutine is driven here, from its first step, as a task would drive it.
        self._handshake = self._loop.start_tls(tcp, http, self._config.ssl, server_side=True,
                                               ssl_handshake_timeout=timeout, ssl_shutdown_timeout=timeout)
        self._step()

    def _step(self, _: object = None) -> None:
        try:
            waiting = self._handshake.send(None)
        except StopIteration as done:
            self._established(done.value)
        except Exception:  # refused by TLS, reset, timed out, or cut to make room
            self._failed()
        else:
            waiting._asyncio_future_blocking = False  # what a task does with the future it waits for
            waiting.add_done_callback(self._step)

    def _established(self, encrypted: asyncio.Transport | None) -> None:
        http, table = self._http, self._config.connections
        if encrypted is None or encrypted.is_closing() or http.phase != HANDSHAKE:  # ended meanwhile
            table.forget(http)
            self._tcp.abort()
        else:
            http.connection_made(encrypted)

    def _failed(self) -> None:
        http, table = self._http, self._config.connections
        if self._loop.time() - http.since >= self._config.limits.handshake_timeout_s * 0.99:
            table.handshake_timed_out(http)
        table.forget(http)
        self._tcp.abort()


class Server(uvicorn.Server):
    """uvicorn's server, with signal handling owned by at most one of the process's servers,
    without re-raising the signal after a graceful stop (so the exit code is 0), and opening its
    listener itself: connections are counted from accept, and TLS starts per connection with a
    deadline (uvicorn's start hands TLS to the loop without one)."""

    config: BridgeConfig

    def __init__(self, config: BridgeConfig, owns_signals: bool,
                 before_shutdown: Callable[[], Awaitable[None]] | None = None) -> None:
        super().__init__(config)
        self._owns_signals = owns_signals
        self._before_shutdown = before_shutdown

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await self.lifespan.startup()
        if self.lifespan.should_exit:
            sys.exit(STARTUP_FAILURE)
        config, loop, state = self.config, asyncio.get_running_loop(), self.lifespan.state

        def http() -> BoundedProtocol:
            return BoundedProtocol(config, self.server_state, state, loop)

        def accept() -> asyncio.Protocol:
            return TlsHandshake(http, config, loop)

        try:
            listener = await loop.create_server(http if config.ssl is None else accept, host=config.host,
                                                port=config.port, backlog=config.backlog)
        except OSError as exc:
            log.error("cannot listen on %s:%d: %s", config.host, config.port, exc)
            await self.lifespan.shutdown()
            sys.exit(STARTUP_FAILURE)
        self.servers = [listener]
        config.connections.start(loop.time, loop.call_later)
        log.info("listening on %s://%s:%d (at most %d connections)", "http" if config.ssl is None else "https",
                 config.host, config.port, config.limits.max_connections)
        self.started = True

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """`before_shutdown` first (the replica leaves), then uvicorn's: the port closes after it."""
        if self._before_shutdown is not None:
            await self._before_shutdown()
        self.config.connections.end_handshakes()
        try:
            await super().shutdown(sockets)
        finally:
            self.config.connections.stop()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if not self._owns_signals:
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
