"""Command line: `python -m bridge serve` (also installed as `cc-bridge serve`)."""
from __future__ import annotations

import argparse
import logging
import ssl
import sys
from typing import Callable

import uvicorn

from . import config
from .app import create_app

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


def serve() -> int:
    try:
        settings = config.load()
    except config.ConfigError as exc:
        print(f"cc-bridge: configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    for name in ("bridge", "uvicorn"):
        logging.getLogger(name).setLevel(settings.log_level.upper())
    if not settings.service_tokens:
        log.warning("SECURITY: BRIDGE_ALLOW_NO_TOKEN=true and no BRIDGE_SERVICE_TOKENS: ANY client that "
                    "presents a well-formed Guid can push events. Use this only behind a trusted network.")
    scheme = "http" if settings.insecure_http else "https"
    if settings.insecure_http:
        log.warning("BRIDGE_INSECURE_HTTP=true: serving plain HTTP; terminate TLS in front of the bridge")
    log.info("push endpoint %s://%s:%d%s -> Kafka %s", scheme, settings.host, settings.port,
             settings.push_path, settings.kafka_bootstrap_servers)
    server = uvicorn.Server(uvicorn_config(settings))
    server.run()
    return 0 if server.started else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cc-bridge", description="CC-Gateway agent events to Kafka.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="serve the push endpoint (settings from BRIDGE_* variables)")
    parser.parse_args(argv)
    return serve()


if __name__ == "__main__":
    sys.exit(main())
