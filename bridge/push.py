"""The push endpoint: one ASGI app for the push path, reading top to bottom as the push travels.

    admit (method, Guid and service_token)
 -> receive the body (size bound; its deadline is the connection's, bridge/connections.py)
 -> parse (content type, the push contract), check the routing, build the records
 -> keep (in-flight bound; Kafka, or the spool; malformed pushes into the dead-letter topic)
 -> finish (the answer, metrics, the agent's risk streak, one `pushEvent` log line)

Every exit answers the two-field JSON body; nothing escapes as a 500. A malformed push from an
authenticated gateway is kept in the dead-letter topic and, in quarantine mode, answered "0".

Logs: a refusal of an authenticated gateway's push, and a quarantined push, is always a line (an
agent is at risk). What anyone can cause at any rate (a refused Guid or token, a wrong method, a
misrouted push) is counted in full in the metrics and logged at a bounded rate per reason: the
first lines in full, then one line per interval saying how many were held back.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import unquote_plus

from starlette.types import Receive, Scope, Send

from . import protocol
from .auth import Authenticator, mask_guid
from .config import Settings
from .delivery import Unavailable
from .logs import BoundedLines, LineBudget, direct_line
from .metrics import Metrics
from .protocol import CONTENT_TYPE, SUCCESS_BODY, Refusal
from .records import Record, Router, build_records, dead_letter_record
from .risk import AgentRisk

log = logging.getLogger("bridge.push")
KEPT_REFUSALS = (400, 413, 415)  # malformed pushes: kept in the dead-letter topic when authenticated
Headers = tuple[tuple[bytes, bytes], ...]
URL_AGENT = b"workNo"  # the query parameter naming the agent in a per-agent callback URL
CLOSE: Headers = ((b"connection", b"close"),)


class Keeper(Protocol):
    """Where the endpoint hands a push's records (bridge/delivery.py's Delivery)."""

    async def keep(self, records: list[Record]) -> bool:
        """Return once the records are durable; True if they were spooled. Raise Unavailable."""


async def answer(send: Send, status: int, body: bytes, extra_headers: Headers = ()) -> None:
    headers = [(b"content-type", CONTENT_TYPE), (b"content-length", str(len(body)).encode()), *extra_headers]
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


@dataclass(slots=True)
class Request:
    """What the push endpoint reads from the request head, and what it learns on the way."""

    method: str
    guid: str | None = None
    token: str | None = None
    content_type: str | None = None
    declared: int | None = None  # Content-Length, when given
    route_key: str | None = None  # the key the agent-affine router hashed on, when it passes one
    url_agent: str | None = None  # the agent the callback URL names (?workNo=), if it names one
    node: str | None = None      # the gateway node; set once the sender is authenticated
    body: bytes = b""
    quarantined: str | None = None  # why the push goes to the dead-letter topic, if it does

    @classmethod
    def of(cls, scope: Scope, route_header: bytes | None) -> Request:
        request = cls(scope["method"])
        for name, value in scope["headers"]:
            if name == b"guid":
                request.guid = value.decode("latin-1")
            elif name == b"service_token":
                request.token = value.decode("latin-1")
            elif name == b"content-type":
                request.content_type = value.decode("latin-1")
            elif name == b"content-length" and value.isdigit():
                request.declared = int(value)
            elif name == route_header:
                request.route_key = value.decode("utf-8", "replace")
        query: bytes = scope.get("query_string", b"")
        if query:
            for pair in query.split(b"&"):
                name, _, value = pair.partition(b"=")
                if name == URL_AGENT:
                    request.url_agent = unquote_plus(value.decode("utf-8", "replace"))
        return request


class PushEndpoint:
    """ASGI app for the push path (any method reaches it, so it can answer 405 in JSON)."""

    def __init__(self, settings: Settings, delivery: Keeper, metrics: Metrics, risk: AgentRisk,
                 auth: Authenticator | None = None, leaving: Callable[[], bool] = lambda: False) -> None:
        self._settings = settings
        self._auth = auth or Authenticator(settings.service_tokens, settings.allow_no_token)
        self._router = Router(settings.topic, settings.routes)
        self._delivery = delivery
        self._metrics = metrics
        self._risk = risk
        self._quarantine = settings.malformed_pushes == "quarantine"
        self._inflight = 0
        metrics.inflight.set_function(lambda: self._inflight)  # read at each scrape, not kept up per push
        self._ok_level = logging.getLevelName(settings.push_log_level.upper())
        self._replica = (settings.replica_name or "").encode()
        self._route_header = settings.router_key_header.encode() if settings.router_key_header else None
        # Lines anyone can cause at any rate (refusals before authentication, routing problems).
        self._bounded_line = BoundedLines(log, LineBudget(), lambda key: metrics.lines_held_back.labels(key).inc(),
                                          {"operation": "pushEvent"})
        self._leaving = leaving  # the replica is leaving: answers close their connection (a router reconnects)
        self._accepted_line = direct_line(log, "pushEvent accepted")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        request = Request.of(scope, self._route_header)
        outcome: dict[str, Any] = {"operation": "pushEvent", "guid": mask_guid(request.guid), "workNo": None,
                                   "events": None}
        try:
            self._admit(request)
            records = await self._read(request, receive, outcome)
            if records is None:
                return  # the gateway hung up; nothing was published
            await self._keep(request, records, outcome)
        except Refusal as refusal:
            await self._keep_refused(request, refusal, outcome)
            await self._finish(send, refusal, outcome, started, trusted=request.node is not None)
            return
        except Exception:  # a bug: logged whole here, answered without detail
            log.exception("pushEvent failed unexpectedly", extra={"fields": outcome})
            await self._finish(send, protocol.unavailable("internal error", "internal"), outcome, started)
            return
        await self._finish(send, None, outcome, started)

    # -- the stages, in the order a push goes through them -------------------------------------

    def _admit(self, request: Request) -> None:
        if request.method != "POST":
            raise Refusal(405, protocol.WRONG_METHOD, f"method {request.method} is not allowed; use POST",
                          "method", ((b"allow", b"POST"),))
        request.node = self._auth.check(request.guid, request.token)

    async def _read(self, request: Request, receive: Receive, outcome: dict[str, Any]) -> list[Record] | None:
        """The push's records (None if the gateway hung up): its well-formed events, plus the whole
        push as a dead letter when any part of it is malformed and quarantine is on. A malformed
        push raises Refusal in strict mode."""
        try:
            body = await read_body(receive, self._settings.max_body_bytes, request.declared)
            if body is None:
                return None
            request.body = body
            protocol.check_content_type(request.content_type)
            push = protocol.parse_push(body, self._settings.max_events_per_push)
            outcome.update(workNo=push.work_no, events=push.size)
            self._check_routing(request, push.work_no)
            if push.problems and not (self._quarantine and push.events):
                raise protocol.bad_message(push.problems[0])
        except Refusal as malformed:
            if not self._quarantine:
                raise
            # Refused, the gateway would send it again every 10 s until the agent is signed out.
            return [self._quarantined(request, malformed, malformed.reason, outcome)]
        records = build_records(push, request.node or "", self._router, replica=self._replica)
        if push.problems:  # the well-formed events go on; the push is kept whole aside
            records.append(self._quarantined(request, protocol.bad_message("; ".join(push.problems[:10])),
                                             "events", outcome))
        return records

    def _check_routing(self, request: Request, work_no: str) -> None:
        """Count, and log at a bounded rate, pushes that did not come the way they should: a callback
        URL naming another agent, or (behind the agent-affine router) a push routed without its agent's
        key. Never a refusal: that would start the gateway's sign-out clock for a routing problem."""
        if request.url_agent is not None and request.url_agent != work_no:
            self._metrics.url_agent_mismatches.inc()
            self._routing_line("url_agent", "the callback URL names another agent than the push", work_no,
                               url_agent=request.url_agent)
        if self._route_header is None:
            return
        if request.route_key is None or request.route_key != work_no:
            miss = "no_key" if not request.route_key else "other_agent"
            self._metrics.affinity_misses.labels(miss).inc()
            self._routing_line(miss, "the router did not route this push by its agent", work_no,
                               route_key=request.route_key)

    def _routing_line(self, kind: str, message: str, work_no: str, **fields: str | None) -> None:
        self._bounded_line(kind, f"pushEvent {message}",
                           {"operation": "pushEvent", "workNo": work_no, "problem": kind, **fields})

    async def _keep(self, request: Request, records: list[Record], outcome: dict[str, Any]) -> None:
        """Hand the records to delivery, within the in-flight bound: it counts pushes received whole,
        so bodies still arriving (slowly, perhaps on purpose) never take a slot from the gateway."""
        if self._inflight >= self._settings.max_inflight_pushes:
            raise protocol.unavailable(f"{self._settings.max_inflight_pushes} pushes are already in flight",
                                       "overloaded", retry_after_s=1)
        self._inflight += 1
        try:
            if await self._delivery.keep(records):
                outcome["spooled"] = True
        except Unavailable as exc:
            raise protocol.unavailable(str(exc), "kafka") from None
        finally:
            self._inflight -= 1
        if request.quarantined is not None:  # counted once kept
            self._metrics.dead_letters.inc()
            self._metrics.quarantined.labels(request.quarantined).inc()

    async def _keep_refused(self, request: Request, refusal: Refusal, outcome: dict[str, Any]) -> None:
        """Strict mode: a malformed push from an authenticated gateway is refused, and a copy kept."""
        if request.node is None or refusal.status not in KEPT_REFUSALS or not self._settings.dead_letter_topic:
            return
        try:
            await self._delivery.keep([self._dead_letter(request, refusal)])
            outcome["kept"] = True
            self._metrics.dead_letters.inc()
        except Unavailable:
            outcome["kept"] = False

    async def _finish(self, send: Send, refusal: Refusal | None, outcome: dict[str, Any], started: float,
                      trusted: bool = True) -> None:
        """Answer, then account for the push once: metrics, the agent's streak, the log line (held
        to a bounded rate when the refusal came before the sender was authenticated)."""
        closing = CLOSE if self._leaving() else ()
        if refusal is None:
            await answer(send, 200, SUCCESS_BODY, closing)
        else:
            await answer(send, refusal.status, protocol.failure_body(refusal), (*refusal.headers, *closing))
        elapsed = time.perf_counter() - started
        self._metrics.push_seconds.observe(elapsed)
        work_no = outcome["workNo"]
        if refusal is None:
            self._metrics.ok.inc()
            if work_no is not None:
                self._risk.succeeded(work_no)
            level = logging.WARNING if "quarantined" in outcome else self._ok_level  # kept aside: always said
            if not log.isEnabledFor(level):
                return
            outcome.update(retcode="0", status=200, duration_ms=round(elapsed * 1000, 2))
            self._accepted_line(level, outcome)
            return
        self._metrics.pushes.labels(refusal.retcode).inc()
        self._metrics.rejected.labels(refusal.reason).inc()
        if work_no is not None:
            self._risk.failed(work_no)
        outcome.update(retcode=refusal.retcode, status=refusal.status, reason=refusal.message,
                       duration_ms=round(elapsed * 1000, 2))
        if trusted:
            log.warning("pushEvent refused", extra={"fields": outcome})
        else:
            self._bounded_line(refusal.reason, "pushEvent refused", outcome)

    # -- dead letters ------------------------------------------------------------------------------

    def _quarantined(self, request: Request, malformed: Refusal, reason: str, outcome: dict[str, Any]) -> Record:
        outcome["quarantined"] = malformed.message
        request.quarantined = reason
        return self._dead_letter(request, malformed)

    def _dead_letter(self, request: Request, refusal: Refusal) -> Record:
        topic = self._settings.dead_letter_topic
        assert topic is not None  # quarantine and kept copies need one (checked by config)
        return dead_letter_record(topic, request.body, refusal.status, refusal.retcode, refusal.message,
                                  request.node or "", request.declared if not request.body else None,
                                  replica=self._replica)
