"""Command line (`python -m bridge`, also installed as `cc-bridge`): `serve`, and `drain` for a
spool left behind by a replica that no longer runs (bridge/drain.py)."""
from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable
from pathlib import Path
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


def drain(spool_dir: Path | None, timeout_s: float) -> int:
    """Deliver the spool slots under `spool_dir` (default BRIDGE_SPOOL_DIR) that no process holds."""
    try:
        from .drain import drain as run_drain
    except ImportError as exc:
        print(f"cc-bridge: {exc.name} is not installed; draining needs the server extra", file=sys.stderr)
        return 2
    try:
        settings = config.load(serving=False)
    except config.ConfigError as exc:
        print(f"cc-bridge: configuration error: {exc}", file=sys.stderr)
        return 2
    root = spool_dir or settings.spool_dir
    if root is None or not root.is_dir():
        print(f"cc-bridge: {f'{root}: no such directory' if root else 'no spool directory'}: set BRIDGE_SPOOL_DIR "
              "or give --spool-dir", file=sys.stderr)
        return 2
    logs.setup(settings.log_level)
    return asyncio.run(run_drain(settings, root, timeout_s, lambda line: print(f"cc-bridge drain: {line}",
                                                                               flush=True)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cc-bridge", description="CC-Gateway agent events to Kafka.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="serve the push endpoint (settings from BRIDGE_* variables)")
    drainer = commands.add_parser(
        "drain", help="deliver spooled pushes left behind by bridges that no longer run, then exit (0: all "
        "delivered; 3: Kafka not usable or not done in time, nothing lost)")
    drainer.add_argument("--spool-dir", type=Path, help="the spool directory (default: BRIDGE_SPOOL_DIR)")
    drainer.add_argument("--timeout", type=float, default=300.0, metavar="SECONDS",
                         help="give up after this long, keeping what is left (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.command == "drain":
        return drain(args.spool_dir, args.timeout)
    return serve()


if __name__ == "__main__":
    sys.exit(main())
