"""The ASGI application: the push route and the producer's lifespan.

A push travels top to bottom through `PushEndpoint.__call__`:
method -> headers (auth) -> body (size bound) -> protocol (parse) -> records -> publisher -> answer.
Every exit answers the two-field JSON body; nothing escapes as a 500.
"""
from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager
from typing import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from . import protocol
from .auth import Authenticator, mask_guid
from .config import Settings
from .protocol import CONTENT_TYPE, SUCCESS_BODY, Refusal
from .publisher import Publisher, PublishError
from .records import Router, build_records

log = logging.getLogger("bridge.push")


async def answer(send: Send, status: int, body: bytes,
                 extra_headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    headers = [(b"content-type", CONTENT_TYPE), (b"content-length", str(len(body)).encode()),
               *extra_headers]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def read_body(receive: Receive, limit: int, declared: int | None) -> bytes | None:
    """The request body, refused as soon as it is known to exceed `limit`; None on disconnect."""
    if declared is not None and declared > limit:
        raise protocol.too_large(limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise protocol.too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class PushEndpoint:
    """ASGI app for the push path (any method reaches it, so it can answer 405 in JSON)."""

    def __init__(self, settings: Settings, publisher: Publisher) -> None:
        self._settings = settings
        self._auth = Authenticator(settings.service_tokens, settings.allow_no_token)
        self._router = Router(settings.topic, settings.routes)
        self._publisher = publisher
        self._inflight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        guid = token = content_type = None
        declared: int | None = None
        for name, value in scope["headers"]:
            if name == b"guid":
                guid = value.decode("latin-1")
            elif name == b"service_token":
                token = value.decode("latin-1")
            elif name == b"content-type":
                content_type = value.decode("latin-1")
            elif name == b"content-length" and value.isdigit():
                declared = int(value)
        work_no = "-"
        try:
            if scope["method"] != "POST":
                raise Refusal(405, protocol.WRONG_METHOD, f"method {scope['method']} is not allowed; use POST",
                              ((b"allow", b"POST"),))
            node = self._auth.check(guid, token)
            protocol.check_content_type(content_type)
            if self._inflight >= self._settings.max_inflight_pushes:
                raise protocol.unavailable(
                    f"{self._settings.max_inflight_pushes} pushes are already in flight", retry_after_s=1)
            self._inflight += 1
            try:
                body = await read_body(receive, self._settings.max_body_bytes, declared)
                if body is None:
                    return  # the gateway hung up; nothing was published
                push = protocol.parse_push(body, self._settings.max_events_per_push)
                work_no = push.work_no
                try:
                    await self._publisher.publish(build_records(push, node, self._router))
                except PublishError as exc:
                    raise protocol.unavailable(str(exc)) from None
            finally:
                self._inflight -= 1
        except Refusal as refusal:
            log.warning("pushEvent refused: retcode=%s status=%d workNo=%s guid=%s reason=%s",
                        refusal.retcode, refusal.status, work_no, mask_guid(guid), refusal.message)
            await answer(send, refusal.status, protocol.failure_body(refusal), refusal.headers)
            return
        except Exception:  # a bug: log it whole here, answer without detail
            log.exception("pushEvent failed unexpectedly: workNo=%s guid=%s", work_no, mask_guid(guid))
            refusal = protocol.unavailable("internal error")
            await answer(send, refusal.status, protocol.failure_body(refusal), refusal.headers)
            return
        log.debug("pushEvent ok: workNo=%s events=%d ms=%.1f", work_no, len(push.events),
                  (time.perf_counter() - started) * 1000)
        await answer(send, 200, SUCCESS_BODY)


async def not_found(request: Request, exc: Exception) -> Response:
    refusal = Refusal(404, protocol.BAD_GUID, f"no such path {request.url.path!r}")
    return Response(protocol.failure_body(refusal), 404, media_type=CONTENT_TYPE.decode())


def create_app(settings: Settings, publisher: Publisher | None = None) -> Starlette:
    """The push app. `publisher` is injectable so benchmarks can measure the HTTP path alone."""
    publisher = publisher or Publisher(settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await publisher.start()
        yield
        await publisher.stop()

    app = Starlette(
        routes=[Route(settings.push_path, PushEndpoint(settings, publisher))],
        exception_handlers={404: not_found},
        lifespan=lifespan,
    )
    app.state.publisher = publisher
    return app
