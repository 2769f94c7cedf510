"""Slow and idle connections against one bridge process while a gateway keeps pushing.

Starts a local Kafka and one bridge (real TLS, loopback only), then for `--duration` seconds:
- attackers, in a child process of their own, hold connections of four kinds, each reopened one
  second after the bridge closes it (what a slowloris tool does):
    slow_head   TLS, then a request head one header line every `--interval` seconds, never finished
    no_tls      TCP connected, TLS never started
    slow_body   TLS, an authenticated head, then one body byte every `--interval` seconds
    idle        TLS, one request answered, then nothing (an idle keep-alive connection)
- bench.simulate plays the gateway (`--agents` agents pushing over keep-alive HTTPS).
It prints the gateway's failed pushes and latency, how long each kind of attacker connection
lasted and how it ended, the bridge's RSS (from /proc) and its connection metrics, then stops
everything it started.

    python -m bench.slowloris                       # 15,000 connections for 60 s
    python -m bench.slowloris --connections 2000 --duration 20 --bridge-env BRIDGE_HEAD_TIMEOUT_S=5

Each process raises its own open-file limit to the hard limit; if that is below what the
connections need, the run says so and holds fewer.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

from tests.support import PUSH_PATH, BridgeProcess, Broker, make_tls

from . import TOKEN
from .simulate import SimSettings, Simulator

KINDS = ("slow_head", "no_tls", "slow_body", "idle")
SPLIT = {"slow_head": 0.8, "no_tls": 1 / 15, "slow_body": 1 / 15, "idle": 1 / 15}  # 15,000: 12,000 + 3 x 1,000
GUID = "279fe21d-1b2c-4d3e-9f00-aabbccddeeff.AgentGateway1"
SPARE_FDS = 500  # the bridge's own files, Kafka connections, the gateway's connections


def raise_fd_limit() -> int:
    """Raise this process' open-file limit to its hard limit; return the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


# -- the attackers (child process) ----------------------------------------------------------------

class Attack:
    """Keeps `counts[kind]` connections of each kind open against 127.0.0.1:`port` until `until`,
    reopening each one 1-2 s after the bridge ends it."""

    def __init__(self, port: int, cafile: str, counts: dict[str, int], interval_s: float, until: float,
                 ramp_s: float) -> None:
        self.port, self.counts, self.interval_s, self.until, self.ramp_s = port, counts, interval_s, until, ramp_s
        self.context = ssl.create_default_context(cafile=cafile)
        self.lifetimes: dict[str, list[float]] = {kind: [] for kind in KINDS}  # of connections the bridge ended
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
                "ended_by_bridge": len(lasted),
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
        """One connection of `kind` until the bridge ends it: how (the answer's status, 'closed',
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


def attack_main(args: argparse.Namespace) -> int:
    raise_fd_limit()
    counts = dict(zip(KINDS, json.loads(args.counts), strict=True))
    import uvloop

    async def run() -> dict[str, object]:
        attack = Attack(args.port, args.cafile, counts, args.interval, time.monotonic() + args.duration, args.ramp)
        return await attack.run()

    summary = uvloop.run(run())
    print(json.dumps(summary), flush=True)
    return 0


# -- the run (parent process) ---------------------------------------------------------------------

def rss_mb(pid: int) -> tuple[float, float]:
    """Resident set size now and at its peak (VmHWM), in MB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def machine_busy_s() -> float:
    """CPU time the whole machine has spent busy (all cores, /proc/stat), in seconds."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """CPU time (user + system) the process has used, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bridge_metrics(bridge: BridgeProcess, histogram: str = "bridge_push_duration_seconds"
                   ) -> tuple[dict[str, float], dict[float, float]]:
    """The bridge's connection and push counters (those not 0), and from `histogram` the share of
    observations within each bucket bound."""
    with urllib.request.urlopen(bridge.management_url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    wanted = ("bridge_connections_", "bridge_pushes_total", "bridge_pushes_rejected_total")
    found, buckets = {}, {}
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if line.startswith(wanted) and "_created" not in line and float(value):
            found[name] = float(value)
        elif line.startswith(histogram + "_bucket"):
            buckets[float(name.partition('le="')[2].rstrip('"}'))] = float(value)
    total = buckets.get(float("inf")) or 1.0
    return found, {bound: count / total for bound, count in buckets.items()}


async def sample(pid: int, every_s: float, samples: list[tuple[float, float, int]], stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            samples.append((time.monotonic(), rss_mb(pid)[0], open_fds(pid)))
        except (FileNotFoundError, ProcessLookupError):
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)


async def measure(args: argparse.Namespace, bridge: BridgeProcess, broker_pid: int | None, cafile: str,
                  counts: dict[str, int]) -> int:
    pid = bridge.proc.pid
    before, started = rss_mb(pid)[0], time.monotonic()
    attackers = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.slowloris", "--attack-port", str(bridge.port), "--cafile", cafile,
        "--counts", json.dumps([counts[k] for k in KINDS]), "--interval", str(args.interval),
        "--duration", str(args.duration), "--ramp", str(args.ramp), stdout=subprocess.PIPE)
    processes = {"bridge": pid, "attackers": attackers.pid, "gateway (this process)": os.getpid(),
                 "kafka": broker_pid}
    cpu_before = {name: cpu_s(p) for name, p in processes.items() if p}
    busy_before = machine_busy_s()
    await asyncio.sleep(min(args.ramp, 5.0))  # the gateway starts while the attack builds up
    gateway = Simulator(SimSettings(url=bridge.url, agents=args.agents, cafile=cafile, token=TOKEN,
                                    duration_s=args.duration - min(args.ramp, 5.0), drain_s=15.0,
                                    retry_interval_s=10.0, timeout_s=8.0))
    samples: list[tuple[float, float, int]] = []
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample(pid, 1.0, samples, stop))
    summary = await gateway.run()
    elapsed = time.monotonic() - started
    cores = {name: (cpu_s(processes[name] or 0) - used) / elapsed for name, used in cpu_before.items()}
    cores["rest of the machine"] = (machine_busy_s() - busy_before) / elapsed - sum(cores.values())
    out, _ = await attackers.communicate()
    metrics, answered = await asyncio.to_thread(bridge_metrics, bridge)
    _, acked = await asyncio.to_thread(bridge_metrics, bridge, "bridge_kafka_publish_duration_seconds")
    stop.set()
    await sampler
    now, peak = rss_mb(pid)
    attack = json.loads(out) if out.strip() else {}
    lat = sorted(summary.latencies)
    p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1000 if lat else float("nan")
    print(f"\nconnections held: {sum(counts.values())} ({', '.join(f'{k} {counts[k]}' for k in KINDS)}) for "
          f"{args.duration:g} s, head line / body byte every {args.interval:g} s")
    print(f"gateway: {summary.attempts} pushes, {sum(summary.failures.values())} failed "
          f"{dict(summary.failures.most_common(4)) or ''}, p50 {lat[len(lat) // 2] * 1000 if lat else 0:.0f} ms, "
          f"p99 {p99:.0f} ms, max {lat[-1] * 1000 if lat else 0:.0f} ms, signed out {summary.signed_out}")
    print("bridge's own answer times (request head to answer): " + ", ".join(
        f"{share:.2%} within {bound * 1000:g} ms" for bound, share in sorted(answered.items()) if bound in (0.1, 0.5, 1)))
    print("of which Kafka's acknowledgements: " + ", ".join(
        f"{share:.2%} within {bound * 1000:g} ms" for bound, share in sorted(acked.items()) if bound in (0.1, 0.5, 1)))
    print(f"  {'kind':<10} what the attackers saw (of the connections the bridge ended: how long they lasted, how)")
    for kind in KINDS:
        print(f"  {kind:<10} {attack.get(kind)}")
    print(f"bridge RSS: {before:.0f} MB before, {max((s[1] for s in samples), default=now):.0f} MB highest sampled, "
          f"{peak:.0f} MB peak (VmHWM), {now:.0f} MB at the end; open files highest "
          f"{max((s[2] for s in samples), default=0)}")
    print(f"CPU, cores on average over the run (of {os.cpu_count()}): "
          + ", ".join(f"{name} {used:.2f}" for name, used in cores.items()))
    for name, value in sorted(metrics.items()):
        print(f"  {name} {value:g}")
    return 0 if not summary.failures else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.slowloris", description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=15_000, help="attacker connections held at once")
    for kind in KINDS:
        parser.add_argument(f"--{kind.replace('_', '-')}", type=int, help=f"{kind} connections (default: a share)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of attack and pushes")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between an attacker's bytes")
    parser.add_argument("--ramp", type=float, default=15.0, help="seconds over which the connections are opened")
    parser.add_argument("--agents", type=int, default=200, help="gateway agents pushing meanwhile")
    parser.add_argument("--pin", action="store_true", help="the bridge alone on core 0; the attackers, the gateway "
                        "and Kafka on core 1 (their CPU then does not delay the bridge)")
    parser.add_argument("--bridge-env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra setting for the bridge (repeatable)")
    parser.add_argument("--attack-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cafile", help=argparse.SUPPRESS)
    parser.add_argument("--counts", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.attack_port is not None:
        args.port = args.attack_port
        return attack_main(args)
    if not 1 <= args.duration <= 600 or not 0 <= args.connections <= 100_000:
        parser.error("--duration is 1-600 s and --connections at most 100,000")

    limit = raise_fd_limit()
    bridge_setup = raise_fd_limit
    if args.pin:
        if (os.cpu_count() or 1) < 2:
            parser.error("--pin needs 2 cores")
        os.sched_setaffinity(0, {1})  # inherited by Kafka and the attackers

        def bridge_setup() -> int:
            os.sched_setaffinity(0, {0})
            return raise_fd_limit()
    counts = {kind: getattr(args, kind) if getattr(args, kind) is not None else round(args.connections * SPLIT[kind])
              for kind in KINDS}
    if sum(counts.values()) + SPARE_FDS > limit:
        print(f"the open-file limit is {limit}: holding {limit - SPARE_FDS} connections, not {sum(counts.values())}")
        scale = (limit - SPARE_FDS) / sum(counts.values())
        counts = {kind: int(n * scale) for kind, n in counts.items()}
    with tempfile.TemporaryDirectory(prefix="slowloris-") as tmp:
        work = Path(tmp)
        tls = make_tls(work / "tls")
        broker = Broker(work / "kafka", tls).start()
        env = {**broker.bridge_env(), "BRIDGE_TOPIC": "bench.slowloris", "BRIDGE_SERVICE_TOKENS": TOKEN,
               "BRIDGE_CREATE_TOPICS": "true", "BRIDGE_PUSH_LOG_LEVEL": "debug",
               **dict(pair.split("=", 1) for pair in args.bridge_env)}
        bridge = BridgeProcess(env, tls, preexec_fn=bridge_setup)
        try:
            bridge.start(work)
            return asyncio.run(measure(args, bridge, broker.pid, str(tls / "ca.pem"), counts))
        finally:
            bridge.stop()
            broker.stop()
            log = bridge.log_path.read_text(errors="replace") if bridge.log_path.exists() else ""
            problems = [line for line in log.splitlines() if '"level":"error"' in line or "Traceback" in line]
            if problems:
                print(f"bridge log: {len(problems)} error lines, first: {problems[0][:300]}")


if __name__ == "__main__":
    sys.exit(main())
