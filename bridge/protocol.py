"""The CC-Gateway push contract: request body, return codes and response bodies. Pure, no I/O.

Every answer is `{"message": ..., "retcode": ...}`. Success is exactly
`{"message": "success", "retcode": "0"}`; each failure carries a gateway-style retcode, a fitting
HTTP status and a message naming what is wrong and where.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

CONTENT_TYPE = b"application/json; charset=UTF-8"
SUCCESS_BODY = orjson.dumps({"message": "success", "retcode": "0"})

# retcodes, in the gateway's own vocabulary
WRONG_METHOD = "000-001"
BAD_GUID = "000-002"
NOT_PERMITTED = "000-003"
BAD_MESSAGE = "000-006"
BAD_TOKEN_FORMAT = "100-001"
UNAVAILABLE = "100-007"

# What a well-formed event may hold (docs/records.md, docs/contracts/event.schema.json).
MAX_EVENT_TIME = 99_999_999_999_999  # eventGenTime: epoch ms of at most 14 digits (before the year 5138)
MAX_EVENT_DEPTH = 100                # levels of nested objects and arrays, the event object being the first
_ABSENT = object()


class Refusal(Exception):
    """A push that is answered with a failure. `message` must never contain a secret; `reason`
    is a short fixed word for metrics."""

    def __init__(self, status: int, retcode: str, message: str, reason: str,
                 headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.retcode = retcode
        self.message = message
        self.reason = reason
        self.headers = headers


def failure_body(refusal: Refusal) -> bytes:
    return orjson.dumps({"message": refusal.message, "retcode": refusal.retcode})


def bad_message(message: str) -> Refusal:
    return Refusal(400, BAD_MESSAGE, message, "body")


def too_large(limit: int) -> Refusal:
    return Refusal(413, BAD_MESSAGE, f"request body is larger than {limit} bytes", "too_large")


def unavailable(message: str, reason: str, retry_after_s: int = 10) -> Refusal:
    return Refusal(503, UNAVAILABLE, message, reason, ((b"retry-after", str(retry_after_s).encode()),))


@dataclass(frozen=True, slots=True)
class Push:
    """A parsed push: the agent's workNo (as text), its well-formed events oldest first, per event
    the agent it belongs to (the event's own workNo, else the push's) and its index in eventList,
    the length of eventList, and what is wrong with the events left out (empty for a valid push).
    `normalized` maps the eventList index of an event whose eventGenTime was normalised to the
    value the gateway sent ({"eventGenTime": <as sent>}); most pushes have none."""

    work_no: str
    events: list[dict[str, Any]]
    agents: list[str]
    indexes: list[int]
    size: int
    problems: list[str]
    normalized: dict[int, dict[str, Any]] = field(default_factory=dict)


def check_content_type(value: str | None) -> None:
    """Accept JSON in UTF-8; a missing header is tolerated (the body is checked anyway)."""
    if value is None:
        return
    media_type, _, params = value.partition(";")
    media_type = media_type.strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise Refusal(415, BAD_MESSAGE, f"Content-Type {media_type!r} is not application/json", "content_type")
    for param in params.split(";"):
        name, _, charset = param.partition("=")
        if name.strip().lower() == "charset" and charset.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise Refusal(415, BAD_MESSAGE, f"charset {charset.strip()!r} is not UTF-8", "content_type")


def work_no_text(value: Any, where: str) -> str:
    """workNo arrives as a string or, from some gateways, as a number; both become text."""
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise bad_message(f"{where} must be a non-empty string or an integer")


def parse_push(body: bytes, max_events: int) -> Push:
    """Parse and check a push body. A problem with the push as a whole raises Refusal naming it;
    events that are not well-formed are left out and named in `Push.problems`."""
    if not body:
        raise bad_message("request body is empty; expected a JSON object with workNo and eventList")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise bad_message(f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise bad_message("request body must be a JSON object with workNo and eventList")
    if "workNo" not in data:
        raise bad_message("workNo is missing")
    work_no = work_no_text(data["workNo"], "workNo")
    events = data.get("eventList")
    if not isinstance(events, list):
        raise bad_message("eventList is missing" if events is None else "eventList must be an array")
    if not events:
        raise bad_message("eventList is empty")
    if len(events) > max_events:
        raise Refusal(413, BAD_MESSAGE, f"eventList has {len(events)} events; the limit is {max_events}",
                      "too_large")
    # No event nests deeper than the body has opening brackets, less the push's own two and one for
    # each other event that is an object or array: most pushes need no closer look.
    openers = body.count(b"{") + body.count(b"[") - 2
    check_depth = openers > MAX_EVENT_DEPTH and \
        openers - sum(isinstance(event, (dict, list)) for event in events) + 1 > MAX_EVENT_DEPTH
    good, agents, indexes, problems = [], [], [], []
    normalized: dict[int, dict[str, Any]] = {}
    for index, event in enumerate(events):
        try:
            agent = event_agent(event, index, work_no)
            sent = event.get("eventGenTime", _ABSENT)
            if sent is not _ABSENT and not (type(sent) is int and 0 <= sent <= MAX_EVENT_TIME):
                when = event_time(sent, index)
                if when is None:
                    del event["eventGenTime"]
                else:
                    event["eventGenTime"] = when
                normalized[index] = {"eventGenTime": sent}
            if check_depth and nested_deeper(event, MAX_EVENT_DEPTH):
                raise bad_message(f"eventList[{index}] nests objects and arrays more than {MAX_EVENT_DEPTH} "
                                  "levels deep")
        except Refusal as refusal:
            problems.append(refusal.message)
            continue
        agents.append(agent)
        good.append(event)
        indexes.append(index)
    return Push(work_no, good, agents, indexes, len(events), problems, normalized)


def event_agent(event: Any, index: int, work_no: str) -> str:
    """The agent a well-formed event belongs to; raise Refusal naming what is wrong with it."""
    if not isinstance(event, dict):
        raise bad_message(f"eventList[{index}] must be an object")
    event_type = event.get("eventType")
    if not isinstance(event_type, str) or not event_type:
        raise bad_message(f"eventList[{index}].eventType must be a non-empty string")
    own = event.get("workNo")
    # The vendor's example leaves workNo empty; absent, null and "" all mean "the push's agent".
    return work_no if own is None or own == "" else work_no_text(own, f"eventList[{index}].workNo")


def event_time(sent: Any, index: int) -> int | None:
    """eventGenTime as the record carries it, for a value that is not already a fitting integer:
    decimal text and whole numbers written as floats become the integer, null and "" (no time) None;
    anything else is not epoch milliseconds and makes the event malformed (Refusal)."""
    if isinstance(sent, str):
        if not sent:
            return None
        if len(sent) <= 14 and sent.isascii() and sent.isdigit():
            return int(sent)
    elif sent is None:
        return None
    elif isinstance(sent, float) and sent.is_integer() and 0 <= sent <= MAX_EVENT_TIME:
        return int(sent)
    raise bad_message(f"eventList[{index}].eventGenTime must be epoch milliseconds: an integer from 0 to "
                      f"{MAX_EVENT_TIME}, or its decimal text")


def nested_deeper(event: dict[str, Any], limit: int) -> bool:
    """Whether objects and arrays nest more than `limit` levels deep in `event` (itself level 1)."""
    level: list[Any] = [event]
    for _ in range(limit):
        level = [child for container in level for child in (container.values() if isinstance(container, dict)
                                                             else container) if isinstance(child, (dict, list))]
        if not level:
            return False
    return True
