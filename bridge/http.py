"""The HTTP/1.1 connection handling of both ports: uvicorn's httptools protocol with the bridge's
limits, writing through a transport that sends each loop turn's writes as one.

`BridgeConfig` is uvicorn's Config plus the limits the protocol enforces; uvicorn builds one
`BoundedProtocol` per connection from it.
"""
from __future__ import annotations

import asyncio
from typing import Any

import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from .protocol import BAD_MESSAGE, CONTENT_TYPE

HEAD_END = b"\r\n\r\n"


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


class BridgeConfig(uvicorn.Config):
    """uvicorn's settings plus the request-head bound (request line and headers, in bytes)."""

    def __init__(self, app: Any, *, max_header_bytes: int, **options: Any) -> None:
        super().__init__(app, http=BoundedProtocol, **options)
        self.max_header_bytes = max_header_bytes
        body = orjson.dumps({"message": f"request headers are larger than {max_header_bytes} bytes",
                             "retcode": BAD_MESSAGE})
        self.head_too_large = (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: " + CONTENT_TYPE
                               + b"\r\ncontent-length: " + str(len(body)).encode()
                               + b"\r\nconnection: close\r\n\r\n" + body)


class BoundedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, refusing a request head larger than the bound with 431 before
    the parser buffers it whole (httptools itself has no bound), and writing through a
    CorkedTransport."""

    def __init__(self, config: BridgeConfig, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.head_limit = config.max_header_bytes
        self.head_too_large = config.head_too_large
        self.head_bytes = 0
        self.tail = b""  # the last bytes of the previous chunk, for a head end split across chunks
        self.in_head = True

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CorkedTransport(transport, self.loop))

    def data_received(self, data: bytes) -> None:
        if self.in_head:
            end = (self.tail + data).find(HEAD_END)
            self.head_bytes += len(data) if end < 0 else end + len(HEAD_END) - len(self.tail)
            self.tail = data[-3:]
            if self.head_bytes > self.head_limit:
                self.transport.write(self.head_too_large)
                self.transport.close()
                return
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self.in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self.in_head, self.head_bytes, self.tail = True, 0, b""
        super().on_message_complete()
