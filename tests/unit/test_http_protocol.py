"""The push port's HTTP protocol (bridge/http.py) driven without sockets: uvicorn's protocol
underneath, a transport that records what is written. What the bridge changes in uvicorn's
handling, and what it relies on uvicorn to do, happen as they should with the pinned uvicorn."""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from starlette.types import Receive, Scope, Send
from uvicorn.server import ServerState

from bridge.connections import BODY, CLOSING, IDLE, Limits
from bridge.http import BoundedProtocol, BridgeConfig

LIMITS = Limits(max_connections=4, handshake_timeout_s=5, head_timeout_s=10, body_timeout_s=10, body_min_rate=1000,
                idle_timeout_s=65)
REQUEST = b"POST /push HTTP/1.1\r\nhost: bridge\r\ncontent-length: 2\r\n\r\n{}"


class Wire(asyncio.Transport):
    """A connection's transport that keeps what the protocol writes."""

    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name in ("peername", "sockname") else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def answer_after_reading(scope: Scope, receive: Receive, send: Send) -> None:
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


async def refuse_at_once(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 413, "headers": [(b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})


def connect(app: Callable[[Scope, Receive, Send], Any]) -> tuple[BoundedProtocol, Wire, ServerState]:
    config = BridgeConfig(app, name="push", max_header_bytes=8192, limits=LIMITS, lifespan="off", log_config=None)
    state = ServerState()
    protocol = BoundedProtocol(config, state, {}, asyncio.get_running_loop())
    wire = Wire()
    protocol.connection_made(wire)
    return protocol, wire, state


async def settle(done: Callable[[], bool]) -> None:
    for _ in range(200):
        if done():
            return
        await asyncio.sleep(0)
    raise AssertionError("not done within 200 loop turns")


async def test_pipelined_requests_are_answered_in_turn_and_no_keepalive_timer_is_armed() -> None:
    protocol, wire, state = connect(answer_after_reading)
    protocol.data_received(REQUEST + REQUEST)
    await settle(lambda: wire.written.count(b"HTTP/1.1 200 OK") == 2 and protocol.phase == IDLE)
    assert state.total_requests == 2 and protocol.proven and not wire.closing
    assert protocol.timeout_keep_alive_task is None, "the table's idle deadline stands for uvicorn's timer"
    protocol.data_received(REQUEST)  # the kept-alive connection's next request
    await settle(lambda: wire.written.count(b"HTTP/1.1 200 OK") == 3 and protocol.phase == IDLE)
    assert state.total_requests == 3 and protocol.timeout_keep_alive_task is None


async def test_a_request_refused_before_its_body_arrived_closes_the_connection() -> None:
    protocol, wire, state = connect(refuse_at_once)
    protocol.data_received(REQUEST[:-2])  # the head; the body is still on its way
    await settle(lambda: wire.closing)
    assert wire.written.startswith(b"HTTP/1.1 413 ")
    assert protocol.phase == CLOSING and state.total_requests == 1 and not protocol.proven


@pytest.mark.parametrize("sent_before", [b"", b"{"])
async def test_a_body_past_its_deadline_is_answered_408_and_the_application_reads_a_disconnect(
        sent_before: bytes) -> None:
    protocol, wire, _ = connect(answer_after_reading)
    protocol.data_received(REQUEST[:-2] + sent_before)
    await settle(lambda: protocol.phase == BODY and protocol.cycle is not None)
    cycle = protocol.cycle
    assert protocol.cut("body_timeout")
    await settle(lambda: cycle.disconnected and not protocol.tasks)  # the application returned
    assert wire.written.startswith(b"HTTP/1.1 408 ") and wire.closing
    assert b"200 OK" not in wire.written


@pytest.mark.parametrize("garbage", [b"GET / HTTP/1.1\r\nhost bridge\r\n\r\n", b"\x16\x03\x01\x00\xa5\x01\x00",
                                     b"POST /push HTTP/1.1\r\ncontent-length: x\r\n\r\n"])
async def test_bytes_the_parser_refuses_get_the_contracts_json_and_a_closed_connection(garbage: bytes) -> None:
    protocol, wire, _ = connect(answer_after_reading)
    protocol.data_received(garbage)
    await settle(lambda: wire.closing)
    head, _, body = wire.written.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and b"content-type: application/json; charset=UTF-8" in head
    assert orjson.loads(body) == {"message": "the request is not valid HTTP/1.1 (Invalid HTTP request received.)",
                                  "retcode": "000-006"}
    assert protocol.phase == CLOSING
