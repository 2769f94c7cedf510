"""Command line: `python -m bridge serve` (also installed as `cc-bridge serve`).

One process, one event loop (uvloop), two servers: the push endpoint (HTTPS) and the management
endpoints (/healthz, /readyz, /metrics; plain HTTP on their own port). On SIGTERM or SIGINT the
push server stops accepting, readiness turns false, in-flight pushes finish within
BRIDGE_SHUTDOWN_TIMEOUT_S, the producer flushes, and the process exits 0.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import ssl
import sys
from typing import Callable, Iterator

import uvicorn
import uvloop

from . import config, logs
from .app import create_app, create_management_app
from .metrics import Metrics
from .publisher import Publisher

log = logging.getLogger("bridge")

# TLS 1.2 suites with forward secrecy and AEAD only; TLS 1.3 suites are always enabled.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20"


def tls_context(_config: uvicorn.Config, default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
    context = default()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def uvicorn_config(settings: config.Settings, app=None) -> uvicorn.Config:
    """The push server's uvicorn settings; `app` defaults to the bridge (benchmarks pass others)."""
    tls: dict = {}
    if not settings.insecure_http:
        tls = {
            "ssl_certfile": str(settings.tls_certfile),
            "ssl_keyfile": str(settings.tls_keyfile),
            "ssl_ciphers": TLS12_CIPHERS,
            "ssl_context_factory": tls_context,
        }
    return uvicorn.Config(
        app if app is not None else create_app(settings),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        server_header=False,
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


async def run(settings: config.Settings) -> bool:
    metrics = Metrics()
    publisher = Publisher(settings, metrics)
    push = Server(uvicorn_config(settings, create_app(settings, publisher, metrics)), owns_signals=True)
    management = Server(uvicorn.Config(
        create_management_app(publisher, metrics, lambda: push.should_exit),
        host=settings.management_host, port=settings.management_port, loop="uvloop", http="httptools",
        lifespan="off", access_log=False, server_header=False, log_config=None,
    ), owns_signals=False)
    management_task = asyncio.create_task(management.serve())
    try:
        await push.serve()
    finally:
        management.should_exit = True
        await management_task
    return push.started


def serve() -> int:
    try:
        settings = config.load()
    except config.ConfigError as exc:
        print(f"cc-bridge: configuration error: {exc}", file=sys.stderr)
        return 2
    logs.setup(settings.log_level)
    if not settings.service_tokens:
        log.warning("SECURITY: BRIDGE_ALLOW_NO_TOKEN=true and no BRIDGE_SERVICE_TOKENS: ANY client that "
                    "presents a well-formed Guid can push events. Use this only behind a trusted network.")
    scheme = "http" if settings.insecure_http else "https"
    if settings.insecure_http:
        log.warning("BRIDGE_INSECURE_HTTP=true: serving plain HTTP; terminate TLS in front of the bridge")
    log.info("push endpoint %s://%s:%d%s -> Kafka %s (%s); management http://%s:%d", scheme, settings.host,
             settings.port, settings.push_path, settings.kafka_bootstrap_servers,
             "atomic pushes" if settings.atomic_pushes else "idempotent", settings.management_host,
             settings.management_port)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        started = runner.run(run(settings))
    return 0 if started else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cc-bridge", description="CC-Gateway agent events to Kafka.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="serve the push endpoint (settings from BRIDGE_* variables)")
    parser.parse_args(argv)
    return serve()


if __name__ == "__main__":
    sys.exit(main())
