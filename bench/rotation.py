"""Refusal floods and secret rotation, measured against a real bridge: python -m bench.rotation

One bridge process over HTTPS with a real single-node Kafka (deploy/kafka-local), everything on
127.0.0.1 in a temporary directory, stopped by itself when done (about a minute):

1. A burst of wrong-token requests (20,000 by default, 64 connections): how many were answered 403
   with the JSON body, how many log lines the bridge wrote about them, and what the refusal metric
   counted.
2. Rotation under a steady gateway-like load (agents each pushing one push after another with the
   valid token, on keep-alive connections): a token added to the token file (time until it is
   accepted), the load switched to it, the old token removed (time until it is refused), then the
   certificate replaced (time until new connections get it, and whether a connection opened before
   still works); the pushes of the load that failed at any moment.

The token file and the certificate live in directories laid out as Kubernetes lays out a Secret
volume and are changed the way the kubelet changes them (SecretVolume). The helpers here are also
used by tests/integration/test_rotation.py.

    python -m bench.rotation [--burst 20000] [--agents 20]
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import socket
import ssl
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson

from tests.support import PUSH_PATH, BridgeProcess, Broker, SecretVolume, make_tls

GUID = "279fe21d-1b2c-4d3e-9f00-aabbccddeeff.AgentGateway1"
OLD_TOKEN, NEW_TOKEN, WRONG_TOKEN = "rotation-old-token", "rotation-new-token", "not-a-token-of-ours"
EFFECT_LIMIT_S = 5.0  # a rotation step must be in effect within this


def tls_files(directory: Path) -> dict[str, bytes]:
    """A certificate and key (make_tls output) as the keys of a kubernetes.io/tls Secret."""
    return {"tls.crt": (directory / "server.pem").read_bytes(), "tls.key": (directory / "server.key").read_bytes()}


def client_context(*cafiles: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(cafiles[0]))
    for cafile in cafiles[1:]:
        context.load_verify_locations(cafile=str(cafile))
    return context


def fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()[:16]


def certificate_fingerprint(pem_file: Path) -> str:
    return fingerprint(ssl.PEM_cert_to_DER_cert(pem_file.read_text()))


def served_fingerprint(port: int, context: ssl.SSLContext) -> str:
    """The certificate a new connection to `port` gets (blocking: run it in a thread)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return fingerprint(der)


def push_body(agent: str, n: int) -> bytes:
    return orjson.dumps({"workNo": agent, "eventList": [
        {"eventType": "AgentState_Ready", "workNo": agent, "content": {"n": n}, "eventGenTime": 1795480000000 + n}]})


def push_headers(token: str) -> dict[str, str]:
    return {"Content-Type": "application/json; charset=UTF-8", "Guid": GUID, "service_token": token}


class OpenConnection:
    """One TLS connection kept open, with pushes sent one after another on it (HTTP/1.1 keep-alive):
    what an already connected gateway does while the certificate changes. Blocking."""

    def __init__(self, port: int, context: ssl.SSLContext) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.tls = context.wrap_socket(raw, server_hostname="localhost")
        der = self.tls.getpeercert(binary_form=True)
        assert der is not None
        self.fingerprint = fingerprint(der)
        self._pushes = 0

    def push(self, token: str, path: str) -> int:
        """Send one push; return the status of its answer."""
        self._pushes += 1
        body = push_body("open-connection", self._pushes)
        head = "".join(f"{k}: {v}\r\n" for k, v in push_headers(token).items())
        self.tls.sendall(f"POST {path} HTTP/1.1\r\nHost: localhost\r\n{head}Content-Length: {len(body)}\r\n\r\n"
                         .encode() + body)
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = self.tls.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the open connection")
            received += chunk
        head_bytes, _, rest = received.partition(b"\r\n\r\n")
        lines = head_bytes.decode("latin-1").split("\r\n")
        length = next(int(v) for k, _, v in (line.partition(":") for line in lines[1:]) if k.lower() == "content-length")
        while len(rest) < length:
            chunk = self.tls.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the open connection")
            rest += chunk
        return int(lines[0].split()[1])

    def close(self) -> None:
        self.tls.close()


@dataclass
class Load:
    """A gateway's steady load: `agents` agents, each sending one push after another (the next
    once the last is answered, after `pause_s`), with the token in `token` at the time of sending;
    agent n uses sessions[n % len(sessions)] (keep-alive connections, or a new connection per push
    with a connector that closes them). Every answer other than 200 with retcode "0", and every
    connection error, is a failure."""

    url: str
    sessions: list[aiohttp.ClientSession]
    token: str
    agents: int = 8
    pause_s: float = 0.02
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> Load:
        self._tasks = [asyncio.create_task(self._agent(f"8{n:04d}", self.sessions[n % len(self.sessions)]))
                       for n in range(self.agents)]
        return self

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def _agent(self, agent: str, session: aiohttp.ClientSession) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            token = self.token
            try:
                async with session.post(self.url, data=push_body(agent, n), headers=push_headers(token)) as reply:
                    body = await reply.read()
                    if reply.status == 200 and orjson.loads(body)["retcode"] == "0":
                        self.ok += 1
                    else:
                        self.failures.append(f"{time.strftime('%H:%M:%S')} {reply.status} {body[:100]!r}")
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                self.failures.append(f"{time.strftime('%H:%M:%S')} {type(exc).__name__}: {exc}")
            await asyncio.sleep(self.pause_s)


async def status_of(session: aiohttp.ClientSession, url: str, token: str) -> int:
    async with session.post(url, data=push_body("probe", 1), headers=push_headers(token)) as reply:
        await reply.read()
        return reply.status


async def until(check: Callable[[], Awaitable[bool]], timeout_s: float, interval_s: float = 0.1) -> float:
    """Seconds until `check()` is true; TimeoutError after `timeout_s`."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"not in effect after {timeout_s:g} s")
        await asyncio.sleep(interval_s)
    return time.monotonic() - started


async def metric(session: aiohttp.ClientSession, management_url: str, sample: str) -> float:
    """The value of one sample (name and labels exactly as exported) of /metrics; 0 if absent."""
    async with session.get(management_url + "/metrics") as reply:
        for line in (await reply.text()).splitlines():
            if line.startswith(sample + " "):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def log_lines(path: Path, skip_bytes: int = 0) -> list[dict[str, object]]:
    """The JSON lines of a bridge log from `skip_bytes` on."""
    with open(path, "rb") as log:
        log.seek(skip_bytes)
        text = log.read()
    found = []
    for line in text.splitlines():
        try:
            found.append(json.loads(line))
        except ValueError:
            continue
    return found


def about_refused_tokens(line: dict[str, object]) -> bool:
    """A log line about a push refused for its token (written in full, or summing up held-back ones)."""
    return line.get("operation") == "pushEvent" and (line.get("retcode") == "000-003" or line.get("problem") == "token")


async def burst(session: aiohttp.ClientSession, url: str, count: int, token: str = WRONG_TOKEN) -> dict[str, int]:
    """`count` pushes with `token`, 64 at a time: answers by (status, retcode) plus bodies that were not JSON."""
    answers: dict[str, int] = {}
    body = push_body("flood", 1)
    sent = 0

    async def worker() -> None:
        nonlocal sent
        while sent < count:
            sent += 1
            try:
                async with session.post(url, data=body, headers=push_headers(token)) as reply:
                    raw = await reply.read()
                    try:
                        key = f"{reply.status} {orjson.loads(raw)['retcode']}"
                    except (ValueError, KeyError, TypeError):
                        key = f"{reply.status} not JSON"
            except (aiohttp.ClientError, OSError) as exc:
                key = type(exc).__name__
            answers[key] = answers.get(key, 0) + 1

    await asyncio.gather(*(worker() for _ in range(64)))
    return answers


# ------------------------------------------------------------------------------------- the bench

async def measure(work: Path, args: argparse.Namespace) -> None:
    old_tls, new_tls = make_tls(work / "tls-old"), make_tls(work / "tls-new")
    broker = Broker(work / "kafka", old_tls)
    print("starting a local Kafka broker ...", flush=True)
    broker.start()
    bridge = None
    try:
        tokens = SecretVolume(work / "tokens", {"service-tokens": f"{OLD_TOKEN}\n".encode()})
        certs = SecretVolume(work / "certs", tls_files(old_tls))
        env = {**broker.bridge_env(), "BRIDGE_TOPIC": "bench.rotation", "BRIDGE_CREATE_TOPICS": "true",
               "BRIDGE_TOPIC_PARTITIONS": "6", "BRIDGE_SERVICE_TOKENS_FILE": str(tokens.path("service-tokens")),
               "BRIDGE_TLS_CERTFILE": str(certs.path("tls.crt")), "BRIDGE_TLS_KEYFILE": str(certs.path("tls.key"))}
        bridge = BridgeProcess(env, old_tls, log_dir=work).start()
        context = client_context(old_tls / "ca.pem", new_tls / "ca.pem")
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context, limit=128),
                                         timeout=timeout) as session, \
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context, force_close=True),
                                      timeout=timeout) as fresh:
            await refusal_burst(session, bridge, args.burst)
            await rotation([session, fresh], bridge, tokens, certs, context, new_tls, args.agents)
    finally:
        if bridge is not None:
            bridge.stop()
        broker.stop()


async def refusal_burst(session: aiohttp.ClientSession, bridge: BridgeProcess, count: int) -> None:
    sample = 'bridge_pushes_rejected_total{reason="token"}'
    before_metric = await metric(session, bridge.management_url, sample)
    before_log = bridge.log_path.stat().st_size
    started = time.monotonic()
    answers = await burst(session, bridge.url, count)
    took = time.monotonic() - started
    await asyncio.sleep(0.5)  # the bridge's log writes are flushed within 0.2 s
    lines = log_lines(bridge.log_path, before_log)
    about = [line for line in lines if about_refused_tokens(line)]
    counted = await metric(session, bridge.management_url, sample) - before_metric
    held = await metric(session, bridge.management_url, 'bridge_log_lines_held_back_total{reason="token"}')
    print(f"\n1. burst of {count} wrong-token requests ({took:.1f} s, {count / took:.0f}/s, 64 connections)")
    print(f"   answers:                        {answers}")
    print(f"   log lines about them:           {len(about)} (all log lines meanwhile: {len(lines)})")
    print(f"   bridge_pushes_rejected_total{{reason=\"token\"}} counted: {counted:.0f}")
    print(f"   bridge_log_lines_held_back_total{{reason=\"token\"}}:     {held:.0f}")
    print(f"   verdict: {'PASS' if answers == {'403 000-003': count} and len(about) < 100 and counted == count else 'FAIL'}"
          " (every one 403 with JSON, under 100 lines, the metric counting all)")


async def rotation(sessions: list[aiohttp.ClientSession], bridge: BridgeProcess, tokens: SecretVolume,
                   certs: SecretVolume, context: ssl.SSLContext, new_tls: Path, agents: int) -> None:
    print(f"\n2. rotation under a steady load of {agents} agents pushing one push after another (half on "
          "keep-alive connections, half on a new connection per push)", flush=True)
    session = sessions[0]
    load = Load(bridge.url, sessions, OLD_TOKEN, agents=agents).start()
    opened = await asyncio.to_thread(OpenConnection, bridge.port, context)
    try:
        await asyncio.sleep(3)
        before = load.ok
        tokens.update({"service-tokens": f"{OLD_TOKEN}\n{NEW_TOKEN}\n".encode()})
        added = await until(lambda: accepted(session, bridge.url, NEW_TOKEN), 30)
        load.token = NEW_TOKEN  # the gateway switches
        await asyncio.sleep(2)
        tokens.update({"service-tokens": f"{NEW_TOKEN}\n".encode()})
        removed = await until(lambda: refused(session, bridge.url, OLD_TOKEN), 30)
        await asyncio.sleep(2)
        new_print = certificate_fingerprint(new_tls / "server.pem")
        certs.update(tls_files(new_tls))

        async def new_certificate() -> bool:
            return await asyncio.to_thread(served_fingerprint, bridge.port, context) == new_print

        swapped = await until(new_certificate, 30)
        await asyncio.sleep(2)
        open_status = await asyncio.to_thread(opened.push, NEW_TOKEN, PUSH_PATH)
        rate = (load.ok - before) / (added + removed + swapped + 6)
    finally:
        await load.stop()
        opened.close()
    print(f"   pushes answered \"0\":            {load.ok} (about {rate:.0f}/s during the rotation)")
    print(f"   token added -> accepted after:  {added:.2f} s")
    print(f"   token removed -> refused after: {removed:.2f} s")
    print(f"   certificate swapped -> served to new connections after: {swapped:.2f} s")
    print(f"   a connection opened before the swap, pushing after it: {open_status}")
    print(f"   failed pushes of the load:      {len(load.failures)} {load.failures[:5]}")
    ok = max(added, removed, swapped) < EFFECT_LIMIT_S and not load.failures and open_status == 200
    print(f"   verdict: {'PASS' if ok else 'FAIL'} (each step within {EFFECT_LIMIT_S:g} s, no failed push)")


async def accepted(session: aiohttp.ClientSession, url: str, token: str) -> bool:
    return await status_of(session, url, token) == 200


async def refused(session: aiohttp.ClientSession, url: str, token: str) -> bool:
    return await status_of(session, url, token) == 403


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rotation", description=__doc__.split("\n")[0])
    parser.add_argument("--burst", type=int, default=20_000, help="wrong-token requests in the burst")
    parser.add_argument("--agents", type=int, default=20, help="agents of the steady load during the rotation")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-rotation-") as work:
        asyncio.run(measure(Path(work), args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
