"""`python -m bench.producer_ceiling`: the bridge's Kafka side alone, the benchmark's producer ceiling.

The bridge's own Publisher (same BRIDGE_* settings: same client, acks=all, idempotence, linger,
TLS) publishes the same pushes with no HTTP in front. The records are built once per body
beforehand with bridge.records.build_records, so building them is counted on the HTTP side only
(the HTTP ceiling includes it) and not twice in the combined ceiling.

- Closed loop (default): `--concurrency` tasks each publish one push's records, wait for Kafka's
  acknowledgement and go on with the next push, like that many gateway connections would.
- Open loop (`--rate R`): a push falls due every 1/R seconds and is published at once (at most
  `--concurrency` in flight, later ones wait for a slot, and that wait counts); its latency runs
  until Kafka acknowledged it. This is the Kafka share of the bridge's latency at that load.

Prints one JSON object: pushes and events acknowledged within the window, errors, CPU time,
latency percentiles in ms.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from pathlib import Path

import uvloop

from bridge import config
from bridge.protocol import parse_push
from bridge.publisher import Publisher, PublishError
from bridge.records import Router, build_records


def percentiles(seconds: list[float]) -> dict[str, float]:
    if not seconds:
        return {}
    ordered = sorted(seconds)

    def at(p: float) -> float:
        return ordered[max(0, math.ceil(p * len(ordered)) - 1)] * 1000

    return {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "p99.9": at(0.999), "max": ordered[-1] * 1000,
            "mean": sum(ordered) / len(ordered) * 1000, "count": len(ordered)}


async def measure(settings: config.Settings, bodies: list[bytes], concurrency: int,
                  warmup_s: float, window_s: float, rate: float | None) -> dict:
    router = Router(settings.topic, settings.routes)
    pool = [build_records(parse_push(body, settings.max_events_per_push), "AgentGateway1", router)
            for body in bodies]
    publisher = Publisher(settings)
    await publisher.start()
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + 30
    while not publisher.ready:  # connected, and the topics exist
        if time.monotonic() > deadline:
            await publisher.stop()
            raise SystemExit("producer_ceiling: Kafka is not ready after 30 s")
        await asyncio.sleep(0.1)
    print("started", flush=True)  # the caller times its CPU sampling from this line
    # Wall-clock time, not loop.time(): uvloop's clock only moves between loop iterations.
    started = time.monotonic()
    window_start, window_end = started + warmup_s, started + warmup_s + window_s
    counts = {"pushes": 0, "events": 0, "errors": 0}
    latencies: list[float] = []
    cpu: dict[str, float] = {}
    loop.call_later(warmup_s, lambda: cpu.__setitem__("start", time.process_time()))
    loop.call_later(warmup_s + window_s, lambda: cpu.__setitem__("end", time.process_time()))
    next_body = 0

    def in_window() -> bool:
        return window_start <= time.monotonic() <= window_end

    async def publish_one(counted, since: float) -> bool:
        """Publish the next push; count it if `counted()` says so once it is answered."""
        nonlocal next_body
        records = pool[next_body % len(pool)]
        next_body += 1
        try:
            await publisher.publish(records)
        except PublishError:
            if counted():
                counts["errors"] += 1
            return False
        if counted():
            counts["pushes"] += 1
            counts["events"] += len(records)
            latencies.append(time.monotonic() - since)
        return True

    async def gateway_connection() -> None:
        while time.monotonic() < window_end:
            ok = await publish_one(in_window, time.monotonic())
            if not ok:
                await asyncio.sleep(0.1)  # a refusal can come at once: back off like a client would

    async def schedule() -> None:
        slots = asyncio.Semaphore(concurrency)
        tasks = set()

        async def due(at: float) -> None:
            fell_due_in_window = window_start <= at < window_end
            async with slots:
                await publish_one(lambda: fell_due_in_window, at)

        for i in range(math.ceil((warmup_s + window_s) * rate)):
            at = started + i / rate
            wait = at - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            task = asyncio.create_task(due(at))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)

    try:
        work = schedule() if rate else asyncio.gather(*(gateway_connection() for _ in range(concurrency)))
        await asyncio.wait_for(work, warmup_s + window_s + settings.publish_timeout_s + 10)
    finally:
        await publisher.stop()
    cpu_s = cpu.get("end", time.process_time()) - cpu.get("start", 0.0)
    return {**counts, "window_s": window_s, "pushes_per_s": counts["pushes"] / window_s,
            "events_per_s": counts["events"] / window_s, "concurrency": concurrency, "rate": rate,
            "cpu_s": cpu_s, "cpu_cores": cpu_s / window_s, "latency_ms": percentiles(latencies)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bodies", type=Path, required=True, help="one push body per line")
    parser.add_argument("--concurrency", type=int, default=64, help="pushes in flight at most")
    parser.add_argument("--rate", type=float, help="open loop at this many pushes per second")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args()
    settings = config.load()
    bodies = [line for line in args.bodies.read_bytes().splitlines() if line.strip()]
    result = uvloop.run(measure(settings, bodies, args.concurrency, args.warmup, args.duration, args.rate))
    print(json.dumps(result), flush=True)  # the last line
    return 0


if __name__ == "__main__":
    sys.exit(main())
