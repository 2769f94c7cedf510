"""The attackers of bench.slowloris, run in a child process of their own: connections of four kinds
held against one port, each reopened one to two seconds after the server ends it (what a slowloris
tool does):

    slow_head   TLS, then a request head one header line every `interval` seconds, never finished
    no_tls      TCP connected, TLS never started
    slow_body   TLS, an authenticated head, then one body byte every `interval` seconds
    idle        TLS, one request answered, then nothing (an idle keep-alive connection)

    python -m bench.attackers PORT CAFILE COUNTS INTERVAL DURATION RAMP

prints, as one JSON line at the end, per kind how many connections were open (at most, on average
after the ramp) and how the ones the server ended lasted and ended.
"""
from __future__ import annotations

import asyncio
import json
import random
import resource
import ssl
import sys
import time
from collections import Counter

from tests.support import PUSH_PATH

from . import TOKEN

KINDS = ("slow_head", "no_tls", "slow_body", "idle")
GUID = "279fe21d-1b2c-4d3e-9f00-aabbccddeeff.AgentGateway1"


def raise_fd_limit() -> int:
    """Raise this process' open-file limit to its hard limit; return the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


class Attack:
    """Keeps `counts[kind]` connections of each kind open against 127.0.0.1:`port` until `until`,
    reopening each one 1-2 s after the server ends it."""

    def __init__(self, port: int, cafile: str, counts: dict[str, int], interval_s: float, until: float,
                 ramp_s: float) -> None:
        self.port, self.counts, self.interval_s, self.until, self.ramp_s = port, counts, interval_s, until, ramp_s
        self.context = ssl.create_default_context(cafile=cafile)
        self.lifetimes: dict[str, list[float]] = {kind: [] for kind in KINDS}  # of connections the server ended
        self.endings: dict[str, Counter[str]] = {kind: Counter() for kind in KINDS}
        self.attempts: Counter[str] = Counter()
        self.open: Counter[str] = Counter()
        self.open_max: Counter[str] = Counter()
        self.open_samples: list[Counter[str]] = []
        self.connecting = asyncio.Semaphore(200)

    async def run(self) -> dict[str, object]:
        slots = [kind for kind in KINDS for _ in range(self.counts[kind])]
        random.Random(1).shuffle(slots)
        start = time.monotonic()
        sampling = asyncio.create_task(self.sample())
        await asyncio.gather(*(self.slot(kind, start + self.ramp_s * n / max(1, len(slots)))
                               for n, kind in enumerate(slots)))
        sampling.cancel()
        after_ramp = self.open_samples[int(self.ramp_s):] or self.open_samples
        summary: dict[str, object] = {}
        for kind in KINDS:
            lasted = sorted(self.lifetimes[kind])
            summary[kind] = {
                "slots": self.counts[kind], "attempts": self.attempts[kind], "open_max": self.open_max[kind],
                "open_mean": round(sum(s[kind] for s in after_ramp) / max(1, len(after_ramp))),
                "ended_by_server": len(lasted),
                "lasted_s_p50": round(lasted[len(lasted) // 2], 2) if lasted else None,
                "lasted_s_p99": round(lasted[int(len(lasted) * 0.99)], 2) if lasted else None,
                "lasted_s_max": round(lasted[-1], 2) if lasted else None,
                "endings": dict(self.endings[kind].most_common())}
        return summary

    async def sample(self) -> None:
        """How many connections of each kind are open, every second."""
        while True:
            self.open_samples.append(Counter(self.open))
            await asyncio.sleep(1.0)

    async def slot(self, kind: str, first_at: float) -> None:
        await asyncio.sleep(max(0.0, first_at - time.monotonic()))
        while time.monotonic() < self.until:
            self.attempts[kind] += 1
            ending, lasted = await self.hold(kind)
            if ending is None:  # the run is over
                return
            self.endings[kind][ending] += 1
            if lasted is not None:
                self.lifetimes[kind].append(lasted)
            await asyncio.sleep(1.0 + random.random())

    async def hold(self, kind: str) -> tuple[str | None, float | None]:
        """One connection of `kind` until the server ends it: how (the answer's status, 'closed',
        'reset', or 'refused' when it did not even open) and how long it was open; (None, None)
        when the run ended first."""
        try:
            async with self.connecting:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(
                    "127.0.0.1", self.port, ssl=None if kind == "no_tls" else self.context,
                    server_hostname=None if kind == "no_tls" else "localhost"), 30)
        except (OSError, TimeoutError, ssl.SSLError):
            return ("refused", None) if time.monotonic() < self.until else (None, None)
        opened = time.monotonic()
        self.open[kind] += 1
        self.open_max[kind] = max(self.open_max[kind], self.open[kind])
        try:
            ending = await asyncio.wait_for(self.talk(kind, reader, writer), max(0.0, self.until - opened))
            return ending, time.monotonic() - opened
        except TimeoutError:
            return None, None
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
            return "reset", time.monotonic() - opened
        finally:
            self.open[kind] -= 1
            writer.transport.abort()

    async def talk(self, kind: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
        if kind == "idle":
            writer.write(b"GET /favicon.ico HTTP/1.1\r\nHost: bridge\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            await reader.readexactly(length)
        elif kind == "slow_head":
            writer.write(f"POST {PUSH_PATH} HTTP/1.1\r\nHost: bridge\r\n".encode())
        elif kind == "slow_body":
            writer.write(f"POST {PUSH_PATH} HTTP/1.1\r\nHost: bridge\r\nGuid: {GUID}\r\nservice_token: {TOKEN}\r\n"
                         "Content-Type: application/json\r\nContent-Length: 10000\r\n\r\n".encode())
        answer = asyncio.create_task(reader.read(200))
        n = 0
        try:
            while True:
                done, _ = await asyncio.wait([answer], timeout=self.interval_s)
                if done:
                    data = answer.result()
                    return data[9:12].decode(errors="replace") if data.startswith(b"HTTP/1.1 ") else "closed"
                n += 1
                if kind == "slow_head":
                    writer.write(f"X-Slow-{n}: {n}\r\n".encode())
                elif kind == "slow_body":
                    writer.write(b" ")
        finally:
            answer.cancel()


def main(argv: list[str]) -> int:
    port, cafile, counts, interval, duration, ramp = argv
    raise_fd_limit()
    held = dict(zip(KINDS, json.loads(counts), strict=True))
    import uvloop

    async def run() -> dict[str, object]:
        attack = Attack(int(port), cafile, held, float(interval), time.monotonic() + float(duration), float(ramp))
        return await attack.run()

    print(json.dumps(uvloop.run(run())), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
