"""`python -m bench.http_ceiling`: the bridge without Kafka, the benchmark's HTTP ceiling.

It is `python -m bridge serve` itself (the same settings, servers, TLS, logging and app) with one
part replaced: headers are checked,
the body is read and parsed, the Kafka records are built, the push is logged and counted, and the
answer is the success body. Only the publisher differs: it takes the records and returns at once.
What this process serves per second is the most the bridge could serve if Kafka cost nothing.
"""
from __future__ import annotations

import sys

from bridge.__main__ import serve
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

    async def publish(self, records: list[Record], timeout: float | None = None) -> None:
        return None

    async def publish_batch(self, records: list[Record], timeout: float | None = None) -> None:
        return None



if __name__ == "__main__":
    sys.exit(serve(NullPublisher))
