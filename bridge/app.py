"""The ASGI applications: the push route with the producer's lifespan, and the management app.

A push travels top to bottom through `PushEndpoint.__call__`:
method -> headers (auth) -> body (size bound) -> protocol (parse) -> records -> publisher -> answer.
Every exit answers the two-field JSON body and writes one `pushEvent` log line; nothing escapes
as a 500. Refused pushes from an authenticated gateway are kept in the dead-letter topic.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from . import protocol
from .auth import Authenticator, mask_guid
from .config import Settings
from .delivery import Delivery, Unavailable
from .metrics import Metrics
from .protocol import CONTENT_TYPE, SUCCESS_BODY, Refusal
from .records import Record, Router, build_records, dead_letter_record
from .risk import AgentRisk

log = logging.getLogger("bridge.push")
KEPT_REFUSALS = (400, 413, 415)  # malformed pushes: kept in the dead-letter topic when authenticated


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

    def __init__(self, settings: Settings, delivery: Delivery, metrics: Metrics, risk: AgentRisk) -> None:
        self._settings = settings
        self._auth = Authenticator(settings.service_tokens, settings.allow_no_token)
        self._router = Router(settings.topic, settings.routes)
        self._delivery = delivery
        self._metrics = metrics
        self._risk = risk
        self._quarantine = settings.malformed_pushes == "quarantine"
        self._inflight = 0
        self._ok_level = logging.getLevelName(settings.push_log_level.upper())

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
        outcome = {"operation": "pushEvent", "guid": mask_guid(guid), "workNo": None, "events": None}
        node: str | None = None  # set once the sender is authenticated
        body = b""
        self._inflight += 1
        self._metrics.inflight.inc()
        try:
            if scope["method"] != "POST":
                raise Refusal(405, protocol.WRONG_METHOD, f"method {scope['method']} is not allowed; use POST",
                              "method", ((b"allow", b"POST"),))
            node = self._auth.check(guid, token)
            if self._inflight > self._settings.max_inflight_pushes:
                raise protocol.unavailable(f"{self._settings.max_inflight_pushes} pushes are already in flight",
                                           "overloaded", retry_after_s=1)
            try:
                body = await read_body(receive, self._settings.max_body_bytes, declared)
                if body is None:
                    return  # the gateway hung up; nothing was published
                protocol.check_content_type(content_type)
                push = protocol.parse_push(body, self._settings.max_events_per_push)
                outcome.update(workNo=push.work_no, events=push.size)
                if push.problems and not (self._quarantine and push.events):
                    raise protocol.bad_message(push.problems[0])
            except Refusal as malformed:
                if not self._quarantine:
                    raise
                # Refused, the gateway would send it again every 10 s until the agent is signed out.
                outcome["quarantined"] = malformed.message
                await self._keep([self._dead_letter(body or b"", malformed, node, declared)], outcome)
                self._metrics.quarantined.labels(malformed.reason).inc()
            else:
                records = build_records(push, node, self._router)
                if push.problems:  # the well-formed events go on; the push is kept whole aside
                    partial = protocol.bad_message("; ".join(push.problems[:10]))
                    outcome["quarantined"] = partial.message
                    records.append(self._dead_letter(body, partial, node, declared))
                    self._metrics.quarantined.labels("events").inc()
                await self._keep(records, outcome)
        except Refusal as refusal:
            await self._refuse(send, refusal, node, body, declared, outcome, started)
            return
        except Exception:  # a bug: logged whole here, answered without detail
            log.exception("pushEvent failed unexpectedly", extra={"fields": outcome})
            await self._refuse(send, protocol.unavailable("internal error", "internal"), None, b"", None,
                               outcome, started)
            return
        finally:
            self._inflight -= 1
            self._metrics.inflight.dec()
        await answer(send, 200, SUCCESS_BODY)
        elapsed = time.perf_counter() - started
        self._metrics.ok.inc()
        self._metrics.push_seconds.observe(elapsed)
        self._risk.succeeded(outcome["workNo"])
        if log.isEnabledFor(self._ok_level):
            outcome.update(retcode="0", status=200, duration_ms=round(elapsed * 1000, 2))
            log.log(self._ok_level, "pushEvent accepted", extra={"fields": outcome})

    async def _keep(self, records: list[Record], outcome: dict) -> None:
        try:
            if await self._delivery.keep(records):
                outcome["spooled"] = True
        except Unavailable as exc:
            raise protocol.unavailable(str(exc), "kafka") from None
        if "quarantined" in outcome:
            self._metrics.dead_letters.inc()

    def _dead_letter(self, body: bytes, refusal: Refusal, node: str, declared: int | None) -> Record:
        return dead_letter_record(self._settings.dead_letter_topic, body, refusal.status, refusal.retcode,
                                  refusal.message, node, declared if not body else None)

    async def _refuse(self, send: Send, refusal: Refusal, node: str | None, body: bytes, declared: int | None,
                      outcome: dict, started: float) -> None:
        if node is not None and refusal.status in KEPT_REFUSALS and self._settings.dead_letter_topic:
            try:  # strict mode: refused, and a copy kept for the operators
                await self._delivery.keep([self._dead_letter(body, refusal, node, declared)])
                outcome["kept"] = True
                self._metrics.dead_letters.inc()
            except Unavailable:
                outcome["kept"] = False
        await answer(send, refusal.status, protocol.failure_body(refusal), refusal.headers)
        elapsed = time.perf_counter() - started
        self._metrics.pushes.labels(refusal.retcode).inc()
        self._metrics.rejected.labels(refusal.reason).inc()
        self._metrics.push_seconds.observe(elapsed)
        if outcome["workNo"] is not None:
            self._risk.failed(outcome["workNo"])
        outcome.update(retcode=refusal.retcode, status=refusal.status, reason=refusal.message,
                       duration_ms=round(elapsed * 1000, 2))
        log.warning("pushEvent refused", extra={"fields": outcome})


async def not_found(request: Request, exc: Exception) -> Response:
    refusal = Refusal(404, protocol.BAD_GUID, f"no such path {request.url.path!r}", "path")
    return Response(protocol.failure_body(refusal), 404, media_type=CONTENT_TYPE.decode())


class PushFirst:
    """Hands the push path straight to its endpoint (which answers every outcome itself) and
    everything else (the lifespan, unknown paths) to the Starlette app, whose middleware layers
    would only add work to every push."""

    def __init__(self, path: str, endpoint: PushEndpoint, app: Starlette) -> None:
        self.path, self.endpoint, self.app = path, endpoint, app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == self.path:
            await self.endpoint(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def create_app(settings: Settings, delivery: Delivery, metrics: Metrics, risk: AgentRisk) -> PushFirst:
    """The push app: the push path, and Starlette for the producer's lifespan and unknown paths."""
    flush_bound = settings.publish_timeout_s

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await delivery.start()
        yield
        try:  # in-flight pushes are already answered; deliver what is still buffered, bounded
            await asyncio.wait_for(delivery.stop(), flush_bound)
        except TimeoutError:
            logging.getLogger("bridge").error("Kafka flush did not finish within %g s", flush_bound)

    app = Starlette(exception_handlers={404: not_found}, lifespan=lifespan)
    return PushFirst(settings.push_path, PushEndpoint(settings, delivery, metrics, risk), app)


def create_management_app(delivery: Delivery, metrics: Metrics, shutting_down: Callable[[], bool]) -> Starlette:
    """/healthz (the process answers), /readyz (pushes can be kept, not draining), /metrics."""

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        info = delivery.describe()
        if shutting_down():
            return JSONResponse({"status": "not ready", "reason": "shutting down", **info}, 503)
        if not delivery.ready:
            return JSONResponse({"status": "not ready", "reason": "pushes cannot be kept: Kafka is not usable "
                                 "and there is no spool accepting them", **info}, 503)
        return JSONResponse({"status": "ready", **info})

    async def prometheus(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return Starlette(routes=[Route("/healthz", healthz), Route("/readyz", readyz),
                             Route("/metrics", prometheus)])
