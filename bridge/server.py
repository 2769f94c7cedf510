"""The HTTP servers of one bridge process, on one event loop (uvloop).

The push endpoint (HTTPS, TLS 1.2 minimum) and the management endpoints (/healthz, /readyz,
/metrics; plain HTTP on their own port). On SIGTERM or SIGINT the replica first tells the other
replicas sharing its spool volume that it leaves (bridge/spool/neighbours.py), then the push server
stops accepting, readiness turns false, in-flight pushes finish within BRIDGE_SHUTDOWN_TIMEOUT_S,
the spool is delivered for up to BRIDGE_EXIT_DRAIN_TIMEOUT_S while Kafka is usable, the producer
flushes, and `run` returns.
"""
from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import uvicorn
from starlette.types import ASGIApp

from . import config, tls
from .app import create_app, create_management_app
from .auth import Authenticator
from .delivery import Delivery
from .http import BridgeConfig
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
        max_header_bytes=settings.max_header_bytes,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        lifespan="on",
        access_log=False,
        server_header=False,
        proxy_headers=False,  # nothing reads forwarded addresses; TLS ends here
        log_config=None,
        timeout_keep_alive=65,
        timeout_graceful_shutdown=settings.shutdown_timeout_s,  # an asyncio timeout: fractions work
        **https,
    )


def management_config(settings: config.Settings, app: ASGIApp) -> BridgeConfig:
    """/healthz, /readyz and /metrics: plain HTTP on their own address and port, no lifespan."""
    return BridgeConfig(app, max_header_bytes=settings.max_header_bytes, host=settings.management_host,
                        port=settings.management_port, loop="uvloop", lifespan="off", access_log=False,
                        server_header=False, log_config=None)


class Server(uvicorn.Server):
    """uvicorn's server, with signal handling owned by at most one of the process's servers and
    without re-raising the signal after a graceful stop (so the exit code is 0)."""

    def __init__(self, config: uvicorn.Config, owns_signals: bool,
                 before_shutdown: Callable[[], Awaitable[None]] | None = None) -> None:
        super().__init__(config)
        self._owns_signals = owns_signals
        self._before_shutdown = before_shutdown

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """`before_shutdown` first (the replica leaves), then uvicorn's: the port closes after it."""
        if self._before_shutdown is not None:
            await self._before_shutdown()
        await super().shutdown(sockets)

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


