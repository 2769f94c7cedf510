"""`python -m bench.http_ceiling`: the bridge without Kafka, the benchmark's HTTP ceiling.

The same settings (BRIDGE_* variables), the same uvicorn configuration (TLS, uvloop, the HTTP
protocol), the same logging and the same app as `python -m bridge serve`: headers are checked,
the body is read and parsed, the Kafka records are built, the push is logged and counted, and the
answer is the success body. Only the publisher differs: it takes the records and returns at once.
What this process serves per second is the most the bridge could serve if Kafka cost nothing.
"""
from __future__ import annotations

import sys

import uvicorn

from bridge import config, logs
from bridge.__main__ import uvicorn_config
from bridge.app import create_app
from bridge.publisher import Publisher
from bridge.records import Record


class NullPublisher(Publisher):
    """The bridge's Publisher with its Kafka side cut off: it never connects, is always ready,
    and accepts every push's records without sending them."""

    @property
    def ready(self) -> bool:
        return True

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def publish(self, records: list[Record]) -> None:
        return None

    async def dead_letter(self, record: Record) -> bool:
        return True


def main() -> int:
    try:
        settings = config.load()
    except config.ConfigError as exc:
        print(f"http_ceiling: configuration error: {exc}", file=sys.stderr)
        return 2
    logs.setup(settings.log_level)
    server = uvicorn.Server(uvicorn_config(settings, create_app(settings, publisher=NullPublisher(settings))))
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
