"""Command line: `python -m bridge serve` (also installed as `cc-bridge serve`)."""
from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import config, logs

if TYPE_CHECKING:
    from .publisher import Publisher

log = logging.getLogger("bridge")


def serve(make_publisher: Callable[..., Publisher] | None = None) -> int:
    """Serve until SIGTERM/SIGINT. `make_publisher` replaces the Kafka publisher (the benchmark's
    HTTP ceiling runs this very stack without Kafka)."""
    try:
        import uvloop

        from .publisher import Publisher
        from .server import run
    except ImportError as exc:  # installed without the server extra: the subscriber library only
        print(f"cc-bridge: {exc.name} is not installed; the bridge needs the server extra "
              "(pip install 'cc-gateway-bridge[server]')", file=sys.stderr)
        return 2
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
        started = runner.run(run(settings, make_publisher or Publisher))
    return 0 if started else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cc-bridge", description="CC-Gateway agent events to Kafka.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="serve the push endpoint (settings from BRIDGE_* variables)")
    parser.parse_args(argv)
    return serve()


if __name__ == "__main__":
    sys.exit(main())
