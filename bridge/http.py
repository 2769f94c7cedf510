"""The HTTP/1.1 connection handling of both ports: uvicorn's httptools protocol with the bridge's
limits, writing through a transport that sends each loop turn's writes as one.

`BridgeConfig` is uvicorn's Config plus the limits the protocol enforces and the port's table of
connections (bridge/connections.py); the server (bridge/listener.py) builds one `BoundedProtocol`
per connection from it. The protocol tells the table each phase change of its connection, as the
parser and the application report them, and ends the connection when the table says so.

Borrowed from uvicorn, whose protocol classes are not a public API (uvicorn is pinned to one minor
release, and tests/unit/test_borrowed_names.py checks every name below):
- `HttpToolsProtocol`: its constructor; the handlers extended here (connection, data, parser and
  response events, `send_400_response`, `shutdown`); the state they read (`transport`, `flow`,
  `pipeline`, `cycle`, `server_state.total_requests`, `loop`, `client`), and the fact that its
  `on_response_complete` arms no keep-alive timer while the connection closes or a pipelined
  request waits.
- `RequestResponseCycle`: `response_started` and `response_complete` are read; a body deadline
  sets `disconnected` and `message_event`, as uvicorn does itself when the peer goes, so the
  application stops waiting for the body at once rather than when the close completes.
- httptools' parser calls the `on_*` handlers by name (httptools is pinned likewise).
"""
from __future__ import annotations

import asyncio
from typing import Any

import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from .connections import BODY, BUSY, CLOSING, GONE, HANDSHAKE, HEAD, IDLE, Connections, Limits
from .protocol import BAD_MESSAGE, CONTENT_TYPE, UNAVAILABLE

HEAD_END = b"\r\n\r\n"
SUCCESS_STATUS = b"HTTP/1.1 2"


class CorkedTransport(asyncio.Transport):
    """A transport whose writes made during one turn of the event loop go out as one write: an
    answer's head and body (uvicorn writes them separately) become one TLS record and one system
    call instead of two. Everything else is passed to the wrapped transport."""

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._transport = transport
        self._pending: list[bytes] = []
        self._loop = loop

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(bytes(data))

    def _flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def answered_ok(self) -> bool:
        """Whether the writes waiting for this turn's end begin with a success status line."""
        return bool(self._pending) and self._pending[0].startswith(SUCCESS_STATUS)

    def send_and_abort(self, data: bytes) -> None:
        """Hand `data` to the connection now, then close it without waiting for the peer."""
        self._pending.append(data)
        self._flush()
        self._transport.abort()

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)


def json_answer(status: str, message: str, retcode: str, *headers: bytes) -> bytes:
    """A whole HTTP answer with the two-field JSON body, closing the connection."""
    body = orjson.dumps({"message": message, "retcode": retcode})
    return b"".join([f"HTTP/1.1 {status}\r\ncontent-type: ".encode(), CONTENT_TYPE, b"\r\ncontent-length: ",
                     str(len(body)).encode(), b"\r\n", *(h + b"\r\n" for h in headers),
                     b"connection: close\r\n\r\n", body])


class BridgeConfig(uvicorn.Config):
    """uvicorn's settings plus the request-head bound (request line and headers, in bytes), the
    connection limits and the table of the port's connections (`name`: the port, for metrics)."""

    def __init__(self, app: Any, *, name: str, max_header_bytes: int, limits: Limits, **options: Any) -> None:
        super().__init__(app, http=BoundedProtocol, **options)
        self.max_header_bytes = max_header_bytes
        self.limits = limits
        self.connections = Connections(limits, name)
        self.head_too_large = json_answer("431 Request Header Fields Too Large",
                                          f"request headers are larger than {max_header_bytes} bytes", BAD_MESSAGE)
        self.head_too_slow = json_answer("408 Request Timeout", f"the request head did not arrive within "
                                         f"{limits.head_timeout_s:g} s", BAD_MESSAGE)
        self.body_too_slow = json_answer("408 Request Timeout", f"the request body did not arrive in time ("
                                         f"{limits.body_timeout_s:g} s, plus 1 s per {limits.body_min_rate} bytes)",
                                         BAD_MESSAGE)
        self.too_many = json_answer("503 Service Unavailable", "too many connections: this one was closed before "
                                    "its request arrived", UNAVAILABLE, b"retry-after: 1")


class BoundedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, writing through a CorkedTransport, refusing a request head
    larger than the bound with 431 before the parser buffers it whole (httptools itself has no
    bound), and keeping the port's table of connections informed. Its keep-alive timer is the
    table's idle deadline: none is armed per response."""

    def __init__(self, config: BridgeConfig, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.bridge_config = config
        self.head_limit = config.max_header_bytes
        self.table = config.connections
        self.head_bytes = 0
        self.tail = b""  # the last bytes of the previous chunk, for a head end split across chunks
        self.in_head = True
        self.head_started = False  # a byte of the current request has arrived
        # What the table reads and writes (bridge.connections.Tracked)
        self.phase = GONE
        self.since = 0.0
        self.received = 0
        self.proven = False
        self.tcp: asyncio.Transport | None = None  # the TCP connection while its TLS handshake runs

    # -- the connection's life -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if self.phase == HANDSHAKE:  # counted at accept, TLS done
            self.tcp = None
            self.table.move(self, HEAD)
        elif not self.table.admit(self, HEAD):  # plain HTTP: counted from now
            transport.abort()
            return
        super().connection_made(CorkedTransport(transport, self.loop))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is None:  # refused, or its TLS handshake failed (TlsHandshake accounts for it)
            return
        self.table.forget(self)
        super().connection_lost(exc)

    def _enter(self, phase: int) -> None:
        if self.phase != GONE and self.phase != CLOSING:
            self.table.move(self, phase)

    def data_received(self, data: bytes) -> None:
        if self.in_head:
            end = (self.tail + data).find(HEAD_END)
            self.head_bytes += len(data) if end < 0 else end + len(HEAD_END) - len(self.tail)
            self.tail = data[-3:]
            if self.head_bytes > self.head_limit:
                self.transport.write(self.bridge_config.head_too_large)
                self.transport.close()
                self._enter(CLOSING)
                return
        super().data_received(data)

    def send_400_response(self, msg: str) -> None:
        """The parser refused the bytes (uvicorn would answer in plain text): the contract's JSON,
        then close. `msg` is uvicorn's own wording, never what the client sent."""
        self.transport.write(json_answer("400 Bad Request", f"the request is not valid HTTP/1.1 ({msg})", BAD_MESSAGE))
        self.transport.close()
        self._enter(CLOSING)

    def shutdown(self) -> None:
        super().shutdown()  # the server stops: idle connections are closed, the others after their answer
        if self.transport.is_closing():
            self._enter(CLOSING)

    # -- parser and application events, in the order of a request --------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.head_started = True
        if self.phase == IDLE:  # a kept-alive connection's next request: its head deadline starts now
            self.table.move(self, HEAD)

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.received = 0
        self._enter(BODY)
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self.received += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self.in_head, self.head_bytes, self.tail, self.head_started = True, 0, b"", False
        answered = self.cycle.response_complete
        super().on_message_complete()
        self._enter(IDLE if answered else BUSY)

    def on_response_complete(self) -> None:
        """The answer is written. uvicorn's own counts it, resumes reading and starts the next
        pipelined request, or, when none waits, arms a keep-alive timer per response: here the
        table's idle deadline stands for that timer, so uvicorn's runs only where it arms none (the
        connection is closing, or a pipelined request waits)."""
        transport = self.transport
        if not transport.is_closing():
            if self.phase == BODY and not self.pipeline:
                # Answered before its body arrived (a refusal): the rest of the body is not waited for.
                transport.close()
            else:
                self.proven = self.proven or transport.answered_ok()  # type: ignore[attr-defined]
        if transport.is_closing() or self.pipeline:
            super().on_response_complete()
            if transport.is_closing():
                self._enter(CLOSING)
            return
        self.server_state.total_requests += 1  # the rest of uvicorn's, without the timer
        self.flow.resume_reading()
        if self.phase == BUSY:
            self._enter(HEAD if self.head_started else IDLE)

    # -- ends decided by the table ----------------------------------------------------------------

    def cut(self, reason: str) -> bool:
        cycle = self.cycle
        if (reason == "head_timeout" and cycle is not None and not cycle.response_complete) or (
                reason == "body_timeout" and self.pipeline):
            # An earlier request of this connection is still being answered: the deadline of the
            # next one counts from now.
            self.table.move(self, HEAD if reason == "head_timeout" else BODY)
            return False
        if reason == "head_timeout" and self.head_started:
            self.transport.write(self.bridge_config.head_too_slow)
        elif reason == "body_timeout" and cycle is not None:
            if not cycle.response_started:
                self.transport.write(self.bridge_config.body_too_slow)
            cycle.disconnected = True  # the application reads a disconnect and answers nothing
            cycle.message_event.set()
        self.transport.close()
        return True

    def evict(self) -> None:
        if self.tcp is not None:  # still in its TLS handshake
            self.tcp.abort()
        elif self.transport is not None:
            answer = self.bridge_config.too_many if self.phase == HEAD and self.head_started else b""
            self.transport.send_and_abort(answer)  # type: ignore[attr-defined]

    def describe(self) -> str:
        peer = self.client if self.tcp is None else self.tcp.get_extra_info("peername")
        return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else ""
