"""Slow and idle connections against real bridge processes over real TLS: every phase of a
connection has a deadline, the number of connections is bounded, and a push in progress is never
the connection cut. The deadlines here are short (1 s); the margins for a busy machine are wide."""
from __future__ import annotations

import asyncio
import ssl
import time
import urllib.request

import orjson
import pytest
from conftest import GUID, TOKEN, bridge_env

from tests.support import BridgeProcess

pytestmark = pytest.mark.integration

PATH = b"/service-cloud/rest/cc-ai/v1/agentevent/pushresult"
PUSH = orjson.dumps({"workNo": "62001", "eventList": [{"eventType": "AgentState_Ready", "content": None}]})
DEADLINE_S = 1.0
LATE_S = 4.0  # how much later than its deadline a cut may come on a loaded machine (the sweep runs every 0.1 s)


def push_head(length: int, path: bytes = PATH) -> bytes:
    return (b"POST " + path + b" HTTP/1.1\r\nHost: bridge\r\nGuid: " + GUID.encode() + b"\r\nservice_token: "
            + TOKEN.encode() + b"\r\nContent-Type: application/json\r\nContent-Length: " + str(length).encode()
            + b"\r\n\r\n")


class Conn:
    """One client connection, TLS unless `tls` is None."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.opened = time.monotonic()

    @classmethod
    async def open(cls, port: int, tls: ssl.SSLContext | None) -> Conn:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls,
                                                       server_hostname="localhost" if tls else None)
        return cls(reader, writer)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def until_closed(self, timeout: float = 30.0) -> tuple[bytes, float]:
        """Everything the bridge sends until it closes the connection, and when it closed (seconds
        after the connection was opened)."""
        data = b""
        async with asyncio.timeout(timeout):
            while chunk := await self.reader.read(65536):
                data += chunk
        return data, time.monotonic() - self.opened

    async def closed_by_bridge(self, within: float = 0.5) -> bool:
        try:
            async with asyncio.timeout(within):
                return await self.reader.read(65536) == b""
        except TimeoutError:
            return False
        except OSError:  # reset: closed all the same
            return True

    async def answer(self) -> tuple[int, dict[str, str], bytes]:
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in
                   (line.decode().partition(":") for line in head.split(b"\r\n")[1:] if line)}
        return status, headers, await self.reader.readexactly(int(headers["content-length"]))

    def close(self) -> None:
        self.writer.transport.abort()


def parse_answer(data: bytes) -> tuple[int, dict[str, str], dict[str, str]]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split(" ")[1]), headers, orjson.loads(body)


def cuts(bridge: BridgeProcess, port: str = "push") -> dict[str, float]:
    with urllib.request.urlopen(bridge.management_url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    found = {}
    for line in text.splitlines():
        prefix = f'bridge_connections_cut_total{{port="{port}",reason="'
        if line.startswith(prefix):
            reason, _, value = line[len(prefix):].partition('"} ')
            found[reason] = float(value)
    return found


@pytest.fixture(scope="module")
def quick(kafka, tls_dir, tmp_path_factory) -> BridgeProcess:
    """A bridge whose deadlines are all 1 s."""
    env = bridge_env(kafka, "test.slow.quick", BRIDGE_HEAD_TIMEOUT_S="1", BRIDGE_BODY_TIMEOUT_S="1",
                     BRIDGE_TLS_HANDSHAKE_TIMEOUT_S="1", BRIDGE_KEEPALIVE_TIMEOUT_S="1")
    process = BridgeProcess(env, tls_dir).start(tmp_path_factory.mktemp("quick"))
    yield process
    process.stop()


@pytest.fixture
def tls(tls_dir) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(tls_dir / "ca.pem"))


def assert_cut_in_time(elapsed: float) -> None:
    assert DEADLINE_S - 0.05 <= elapsed <= DEADLINE_S + LATE_S, f"cut after {elapsed:.2f} s"


async def test_a_slow_head_is_answered_408_in_json_and_closed_at_its_deadline(quick, tls):
    conn = await Conn.open(quick.port, tls)
    conn.send(b"POST " + PATH + b" HTTP/1.1\r\nHost: bridge\r\n")

    async def trickle() -> None:
        for n in range(100):
            await asyncio.sleep(0.2)
            conn.send(b"X-Slow-%d: 1\r\n" % n)

    trickling = asyncio.create_task(trickle())
    try:
        data, elapsed = await conn.until_closed()
    finally:
        trickling.cancel()
        conn.close()
    status, headers, body = parse_answer(data)
    assert (status, headers["content-type"], headers["connection"]) == (408, "application/json; charset=UTF-8", "close")
    assert body == {"message": "the request head did not arrive within 1 s", "retcode": "000-006"}
    assert_cut_in_time(elapsed)
    assert cuts(quick)["head_timeout"] >= 1


async def test_a_connection_that_sends_nothing_and_an_idle_one_are_closed_without_an_answer(quick, tls):
    silent = await Conn.open(quick.port, tls)
    kept = await Conn.open(quick.port, tls)
    kept.send(push_head(len(PUSH)) + PUSH)
    status, _, body = await kept.answer()
    assert (status, orjson.loads(body)["retcode"]) == (200, "0")
    answered = time.monotonic()
    (nothing, elapsed), (after_push, _) = await asyncio.gather(silent.until_closed(), kept.until_closed())
    idle_for = time.monotonic() - answered
    assert nothing == b"" and after_push == b"", "no answer on a connection without a request"
    assert_cut_in_time(elapsed)
    assert_cut_in_time(idle_for)  # BRIDGE_KEEPALIVE_TIMEOUT_S=1
    assert cuts(quick)["idle_timeout"] >= 1


async def test_a_stalled_body_is_answered_408_and_nothing_is_published(quick, tls):
    conn = await Conn.open(quick.port, tls)
    conn.send(push_head(len(PUSH)) + PUSH[:10])
    try:
        data, elapsed = await conn.until_closed()
    finally:
        conn.close()
    status, headers, body = parse_answer(data)
    assert (status, headers["content-type"]) == (408, "application/json; charset=UTF-8")
    assert body["retcode"] == "000-006" and "body did not arrive" in body["message"]
    assert_cut_in_time(elapsed)  # 1 s, plus 1 s per 8192 bytes received
    assert cuts(quick)["body_timeout"] >= 1
    assert "Traceback" not in quick.log()


async def test_a_body_sent_a_byte_at_a_time_is_cut_all_the_same(quick, tls):
    conn = await Conn.open(quick.port, tls)
    conn.send(push_head(len(PUSH)))

    async def trickle() -> None:
        for byte in PUSH:
            await asyncio.sleep(0.3)
            conn.send(bytes([byte]))

    trickling = asyncio.create_task(trickle())
    try:
        data, elapsed = await conn.until_closed()
    finally:
        trickling.cancel()
        conn.close()
    assert parse_answer(data)[0] == 408
    assert_cut_in_time(elapsed)


async def test_a_connection_that_never_starts_tls_is_closed_at_the_handshake_deadline(quick):
    before = cuts(quick).get("handshake_timeout", 0)
    conn = await Conn.open(quick.port, None)
    try:
        data, elapsed = await conn.until_closed()
    finally:
        conn.close()
    assert data == b""
    assert_cut_in_time(elapsed)
    await asyncio.sleep(0.2)
    assert cuts(quick)["handshake_timeout"] == before + 1


async def test_the_management_port_has_the_same_head_deadline(quick):
    conn = await Conn.open(quick.management_port, None)
    conn.send(b"GET /metrics HTTP/1.1\r\nHost: bridge\r\n")
    try:
        data, elapsed = await conn.until_closed()
    finally:
        conn.close()
    assert parse_answer(data)[0] == 408
    assert_cut_in_time(elapsed)
    assert cuts(quick, "management")["head_timeout"] >= 1


@pytest.fixture(scope="module")
def bounded(kafka, tls_dir, tmp_path_factory) -> BridgeProcess:
    """A bridge holding at most 16 connections and 2 pushes in flight, with long deadlines."""
    env = bridge_env(kafka, "test.slow.bounded", BRIDGE_MAX_CONNECTIONS="16", BRIDGE_MAX_INFLIGHT_PUSHES="2",
                     BRIDGE_HEAD_TIMEOUT_S="60", BRIDGE_BODY_TIMEOUT_S="60", BRIDGE_KEEPALIVE_TIMEOUT_S="60")
    process = BridgeProcess(env, tls_dir).start(tmp_path_factory.mktemp("bounded"))
    yield process
    process.stop()


async def test_above_the_bound_idle_connections_go_first_then_slow_heads_never_a_push(bounded, tls):
    opened: list[Conn] = []
    try:
        gateway = await Conn.open(bounded.port, tls)  # answered with success: the gateway's connection
        gateway.send(push_head(len(PUSH)) + PUSH)
        assert (await gateway.answer())[0] == 200
        pushes = []  # pushes in progress: their bodies are still arriving
        for _ in range(3):
            pushes.append(await Conn.open(bounded.port, tls))
            pushes[-1].send(push_head(len(PUSH)) + PUSH[:5])
        idle = []  # answered, but not with success
        for _ in range(4):
            idle.append(await Conn.open(bounded.port, tls))
            idle[-1].send(b"GET /nowhere HTTP/1.1\r\nHost: bridge\r\n\r\n")
            assert (await idle[-1].answer())[0] == 404
        heads = []
        for _ in range(8):
            heads.append(await Conn.open(bounded.port, tls))
            heads[-1].send(b"POST " + PATH + b" HTTP/1.1\r\n")
        opened = [gateway, *pushes, *idle, *heads]
        await asyncio.sleep(0.3)
        assert not any([await c.closed_by_bridge(0.05) for c in opened]), "16 connections fit"

        # Each new connection takes the place of one: the idle ones first, oldest first...
        for n in range(len(idle)):
            opened.append(await Conn.open(bounded.port, tls))
            assert await idle[n].closed_by_bridge(3), f"idle connection {n} still open"
            assert not any([await c.closed_by_bridge(0.05) for c in idle[n + 1:] + heads])
        # ...then the slow heads, longest first, told why.
        for n in range(2):
            opened.append(await Conn.open(bounded.port, tls))
            data, _ = await heads[n].until_closed(5)
            status, _, body = parse_answer(data)
            assert (status, body["retcode"]) == (503, "100-007") and "too many connections" in body["message"]
            assert not await heads[n + 1].closed_by_bridge(0.05)

        # The pushes in progress were never the ones closed; they complete now.
        for conn in pushes:
            conn.send(PUSH[5:])
            status, _, body = await conn.answer()
            assert (status, orjson.loads(body)["retcode"]) == (200, "0")
        assert not await gateway.closed_by_bridge(0.05), "the gateway's idle connection went last"
        assert cuts(bounded)["evicted"] >= 6
    finally:
        for conn in opened:
            conn.close()


async def test_when_only_pushes_in_progress_are_open_a_new_connection_is_refused(bounded, tls):
    await asyncio.sleep(0.5)  # the previous test's connections are gone
    refused_before = cuts(bounded).get("refused", 0)
    pushes = []
    try:
        for _ in range(16):
            pushes.append(await Conn.open(bounded.port, tls))
            pushes[-1].send(push_head(len(PUSH)) + PUSH[:5])
        await asyncio.sleep(0.5)
        with pytest.raises((ConnectionError, ssl.SSLError, asyncio.IncompleteReadError, OSError)):
            late = await Conn.open(bounded.port, tls)  # the handshake finds the connection closed
            late.send(push_head(len(PUSH)) + PUSH)
            await late.answer()
        assert cuts(bounded)["refused"] == refused_before + 1
        for conn in pushes:
            conn.send(PUSH[5:])
            assert (await conn.answer())[0] == 200
    finally:
        for conn in pushes:
            conn.close()


async def test_slow_bodies_do_not_take_the_gateways_in_flight_slots(bounded, tls):
    await asyncio.sleep(0.5)
    slow = []
    try:
        for _ in range(6):  # three times BRIDGE_MAX_INFLIGHT_PUSHES
            slow.append(await Conn.open(bounded.port, tls))
            slow[-1].send(push_head(len(PUSH)) + PUSH[:5])
        await asyncio.sleep(0.3)
        gateway = await Conn.open(bounded.port, tls)
        slow.append(gateway)
        for _ in range(3):
            gateway.send(push_head(len(PUSH)) + PUSH)
            status, _, body = await gateway.answer()
            assert (status, orjson.loads(body)["retcode"]) == (200, "0")
    finally:
        for conn in slow:
            conn.close()
