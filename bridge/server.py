"""The HTTP servers of one bridge process, on one event loop (uvloop).

The push endpoint (HTTPS, TLS 1.2 minimum) and the management endpoints (/healthz, /readyz,
/metrics; plain HTTP on their own port). On SIGTERM or SIGINT the push server stops accepting,
readiness turns false, in-flight pushes finish within BRIDGE_SHUTDOWN_TIMEOUT_S, the producer
flushes, and `run` returns.
"""
from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import ssl
from collections.abc import Callable, Iterator

import orjson
import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from . import config
from .app import create_app, create_management_app
from .delivery import Delivery
from .kafka import give_aiokafka_the_loop
from .metrics import Metrics
from .protocol import BAD_MESSAGE, CONTENT_TYPE
from .publisher import Publisher
from .risk import AgentRisk
from .spool import Spool, SpoolError

log = logging.getLogger("bridge")
HEAD_END = b"\r\n\r\n"


class CorkedTransport:
    """A transport whose writes made during one turn of the event loop go out as one write: an
    answer's head and body (uvicorn writes them separately) become one TLS record and one system
    call instead of two. Everything else is the wrapped transport's."""

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._pending: list[bytes] = []
        self._loop = asyncio.get_running_loop()

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)

    def _flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str):
        return getattr(self._transport, name)


def bounded_head_protocol(limit: int) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol, refusing a request head (request line and headers) larger
    than `limit` bytes with 431 before the parser buffers it whole, and writing through a
    CorkedTransport."""
    body = orjson.dumps({"message": f"request headers are larger than {limit} bytes", "retcode": BAD_MESSAGE})
    refusal = (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: " + CONTENT_TYPE
               + b"\r\ncontent-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body)

    class BoundedHeadProtocol(HttpToolsProtocol):
        head_bytes = 0
        tail = b""  # the last bytes of the previous chunk, for a head end split across chunks
        in_head = True

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(CorkedTransport(transport))

        def data_received(self, data: bytes) -> None:
            if self.in_head:
                end = (self.tail + data).find(HEAD_END)
                self.head_bytes += len(data) if end < 0 else end + len(HEAD_END) - len(self.tail)
                self.tail = data[-3:]
                if self.head_bytes > limit:
                    self.transport.write(refusal)
                    self.transport.close()
                    return
            super().data_received(data)

        def on_headers_complete(self) -> None:
            self.in_head = False
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self.in_head, self.head_bytes, self.tail = True, 0, b""
            super().on_message_complete()

    return BoundedHeadProtocol


# TLS 1.2 suites with forward secrecy and AEAD only; TLS 1.3 suites are always enabled.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20"


def tls_context(_config: uvicorn.Config, default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
    context = default()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def uvicorn_config(settings: config.Settings, app: ASGIApp) -> uvicorn.Config:
    """The push server's uvicorn settings (the benchmark's naive receiver uses them too)."""
    tls: dict = {}
    if not settings.insecure_http:
        tls = {
            "ssl_certfile": str(settings.tls_certfile),
            "ssl_keyfile": str(settings.tls_keyfile),
            "ssl_ciphers": TLS12_CIPHERS,
            "ssl_context_factory": tls_context,
        }
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=bounded_head_protocol(settings.max_header_bytes),
        lifespan="on",
        access_log=False,
        server_header=False,
        proxy_headers=False,  # nothing reads forwarded addresses; TLS ends here
        log_config=None,
        timeout_keep_alive=65,
        timeout_graceful_shutdown=settings.shutdown_timeout_s,
        **tls,
    )


class Server(uvicorn.Server):
    """uvicorn's server, with signal handling owned by at most one of the process's servers and
    without re-raising the signal after a graceful stop (so the exit code is 0)."""

    def __init__(self, config: uvicorn.Config, owns_signals: bool) -> None:
        super().__init__(config)
        self._owns_signals = owns_signals

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


def open_spool(settings: config.Settings) -> tuple[Spool | None, str]:
    """The recovered outage spool, or None and why. A spool that cannot be opened does not stop the
    bridge (pushes still go to Kafka while it is usable); readiness and metrics show the problem."""
    if settings.spool_dir is None:
        log.warning("BRIDGE_SPOOL_DIR is not set: while Kafka cannot take pushes they are refused with 503, and "
                    "an outage longer than 2 minutes gets agents signed out by the gateway")
        return None, ""
    try:
        spool = Spool.open(settings.spool_dir, settings.spool_max_bytes)
    except SpoolError as exc:
        log.error("outage spool unavailable: %s; pushes are refused with 503 whenever Kafka cannot take them", exc)
        return None, str(exc)
    log.info("outage spool in %s (limit %d bytes)", spool.directory, settings.spool_max_bytes)
    return spool, ""


async def run(settings: config.Settings, make_publisher: Callable[..., Publisher] = Publisher) -> bool:
    """Serve until SIGTERM/SIGINT. `make_publisher(settings, metrics)` is replaceable so the
    benchmark can run this very stack without Kafka. The spool is recovered before anything else."""
    give_aiokafka_the_loop(asyncio.get_running_loop())
    spool, spool_problem = open_spool(settings)
    metrics = Metrics()
    risk = AgentRisk()
    metrics.watch_risk(risk)
    delivery = Delivery(make_publisher(settings, metrics), spool, metrics, spool_problem)
    push = Server(uvicorn_config(settings, create_app(settings, delivery, metrics, risk)), owns_signals=True)
    management = Server(uvicorn.Config(
        create_management_app(delivery, metrics, lambda: push.should_exit),
        host=settings.management_host, port=settings.management_port, loop="uvloop",
        http=bounded_head_protocol(settings.max_header_bytes),
        lifespan="off", access_log=False, server_header=False, log_config=None,
    ), owns_signals=False)
    management_task = asyncio.create_task(management.serve())
    # What exists now (modules, settings, the apps) lives as long as the process: keep it out of
    # the collector's way, and collect the young generation less often, since a push allocates a
    # few hundred short-lived containers that reference counting frees anyway.
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)
    try:
        await push.serve()
    finally:
        management.should_exit = True
        await management_task
    return push.started


