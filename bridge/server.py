"""The HTTP servers of one bridge process, on one event loop (uvloop).

The push endpoint (HTTPS, TLS 1.2 minimum) and the management endpoints (/healthz, /readyz,
/metrics; plain HTTP on their own port). Each port counts its connections from accept and holds
them to deadlines and a bound (bridge/connections.py); on the HTTPS port a connection is counted
before its TLS handshake starts, and the handshake has a deadline. On SIGTERM or SIGINT the replica
first tells the other replicas sharing its spool volume that it leaves (bridge/spool/neighbours.py),
then the push server stops accepting, readiness turns false, in-flight pushes finish within
BRIDGE_SHUTDOWN_TIMEOUT_S, the spool is delivered for up to BRIDGE_EXIT_DRAIN_TIMEOUT_S while Kafka
is usable, the producer flushes, and `run` returns.
"""
from __future__ import annotations

import asyncio
import contextlib
import gc
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
from .app import create_app, create_management_app
from .auth import Authenticator
from .connections import HANDSHAKE, Limits
from .delivery import Delivery
from .http import BoundedProtocol, BridgeConfig
from .kafka import give_aiokafka_the_loop
from .metrics import Metrics
from .publisher import Publisher
from .risk import AgentRisk
from .spool import Spool, SpoolError
from .watch import SecretError, Watcher, watch_bridge_files

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


def open_spool(settings: config.Settings, on_damage: Callable[[int], object]) -> tuple[Spool | None, str]:
    """The recovered outage spool, or None and why. A spool that cannot be opened does not stop the
    bridge (pushes still go to Kafka while it is usable); readiness and metrics show the problem.
    `on_damage(n)` is told of damaged entries, from recovery on."""
    if settings.spool_dir is None:
        log.warning("BRIDGE_SPOOL_DIR is not set: while Kafka cannot take pushes they are refused with 503, and "
                    "an outage longer than 2 minutes gets agents signed out by the gateway")
        return None, ""
    try:
        spool = Spool.open(settings.spool_dir, settings.spool_max_bytes, on_damage=on_damage,
                           join_window_s=settings.join_window_s)
    except SpoolError as exc:
        log.error("outage spool unavailable: %s; pushes are refused with 503 whenever Kafka cannot take them", exc)
        return None, str(exc)
    log.info("outage spool in %s (limit %d bytes)", spool.directory, settings.spool_max_bytes)
    return spool, ""


async def run(settings: config.Settings, make_publisher: Callable[..., Publisher] = Publisher) -> bool:
    """Serve until SIGTERM/SIGINT. `make_publisher(settings, metrics)` is replaceable so the
    benchmark can run this very stack without Kafka. The spool is recovered before anything else."""
    give_aiokafka_the_loop(asyncio.get_running_loop())
    metrics = Metrics()
    spool, spool_problem = open_spool(settings, metrics.spool_corrupt.inc)
    risk = AgentRisk()
    metrics.watch_risk(risk)
    # Secrets and certificates from files, read again whenever they change (bridge/watch.py).
    auth = Authenticator(settings.service_tokens, settings.allow_no_token)
    certificate = None
    if not settings.insecure_http:
        assert settings.tls_certfile is not None and settings.tls_keyfile is not None  # checked by config
        certificate = tls.Certificate(settings.tls_certfile, settings.tls_keyfile)
    files = Watcher(metrics)
    try:
        watch_bridge_files(files, settings, auth, certificate)
    except SecretError as exc:
        log.error("cannot start: %s", exc)
        return False
    delivery = Delivery(make_publisher(settings, metrics), spool, metrics, spool_problem)
    push = Server(push_config(settings, create_app(settings, delivery, metrics, risk, auth), certificate),
                  owns_signals=True, before_shutdown=lambda: delivery.serve(False))
    management = Server(management_config(settings, create_management_app(
        delivery, metrics, lambda: push.should_exit, files.describe)), owns_signals=False)
    metrics.watch_connections(push.config.connections, management.config.connections)
    management_task = asyncio.create_task(management.serve(), name="management-server")
    watch_task = asyncio.create_task(files.run(), name="secret-files")
    # What exists now (modules, settings, the apps) lives as long as the process: keep it out of
    # the collector's way, and collect the young generation less often, since a push allocates a
    # few hundred short-lived containers that reference counting frees anyway.
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)
    try:
        await push.serve()
    finally:
        watch_task.cancel()
        management.should_exit = True
        await management_task
        await asyncio.gather(watch_task, return_exceptions=True)
    return push.started


