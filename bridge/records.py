"""From a validated push to Kafka records: topic routing, key, value and headers. Pure, no I/O.

One record per event, in list order:
- topic: the first route whose glob matches eventType, else the default topic;
- key: the agent's workNo as UTF-8, so Kafka's default partitioner keeps an agent on one partition;
- value: the event object as JSON with every field kept;
- headers: CloudEvents Kafka binding (binary mode) plus where the event sat in its push, and on an
  event whose eventGenTime the protocol normalised, `bridge_normalized` with what the gateway sent.

ce_id is derived from the event itself (key and value bytes, plus how many identical events came
before it in the same push), so a gateway retry of the same events yields the same ids.
"""
from __future__ import annotations

import hashlib
import itertools
import os
import time
import uuid
from fnmatch import fnmatchcase
from typing import NamedTuple

import orjson

from .config import Route
from .logs import utc_text
from .protocol import Push

SPEC_VERSION = b"1.0"
JSON = b"application/json"


class Record(NamedTuple):
    """One Kafka record. A tuple: a push makes one per event, and a tuple is made at C speed."""

    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


class Router:
    """eventType -> topic (and the eventType as the ce_type header's bytes). Results are cached;
    new event types appear rarely."""

    CACHE_LIMIT = 4096

    def __init__(self, default_topic: str, routes: tuple[Route, ...]) -> None:
        self._default = default_topic
        self._routes = routes
        self._cache: dict[str, tuple[str, bytes]] = {}

    def topic_for(self, event_type: str) -> str:
        return self.route(event_type)[0]

    def route(self, event_type: str) -> tuple[str, bytes]:
        found = self._cache.get(event_type)
        if found is None:
            topic = next((r.topic for r in self._routes if fnmatchcase(event_type, r.pattern)), self._default)
            found = (topic, event_type.encode())
            if len(self._cache) < self.CACHE_LIMIT:
                self._cache[event_type] = found
        return found


_push_ids = itertools.count()
_PROCESS_ID = os.urandom(6).hex()  # push ids: unique per process start, then a counter


def new_push_id() -> str:
    return f"{_PROCESS_ID}-{next(_push_ids):x}"


def rfc3339(moment: float) -> bytes:
    """`moment` as the records' ce_time: RFC 3339 UTC with milliseconds."""
    return utc_text(moment, "Z").encode()


def source_for(node: str) -> bytes:
    return f"/cc-gateway/{node}".encode() if node else b"/cc-gateway"


def build_records(push: Push, node: str, router: Router, received_at: float | None = None,
                  push_id: str | None = None, replica: bytes = b"") -> list[Record]:
    """One record per well-formed event of `push`; `replica` (the accepting replica's name) goes into
    the bridge_replica header when given."""
    received_at = time.time() if received_at is None else received_at
    shared: tuple[tuple[str, bytes], ...] = (
        ("ce_specversion", SPEC_VERSION),
        ("ce_source", source_for(node)),
        ("ce_time", rfc3339(received_at)),
        ("content-type", JSON),
        ("ce_pushid", (push_id or new_push_id()).encode()),
        ("ce_pushsize", str(push.size).encode()),
    )
    if replica:
        shared += (("bridge_replica", replica),)
    seen: dict[str, int] = {}
    keys: dict[str, bytes] = {}  # an agent's key, encoded once per push
    records = []
    normalized = push.normalized
    for index, event, agent in zip(push.indexes, push.events, push.agents, strict=False):
        key = keys.get(agent)
        if key is None:
            key = keys[agent] = agent.encode()
        value = orjson.dumps(event)
        digest = hashlib.blake2b(key + b"\x00" + value, digest_size=16).hexdigest()
        repeat = seen.get(digest, 0)
        seen[digest] = repeat + 1
        topic, event_type = router.route(event["eventType"])
        # Around the push's shared headers, made once (a list: aiokafka's record builder takes no other).
        headers = [("ce_id", (digest if repeat == 0 else f"{digest}-{repeat}").encode()), ("ce_type", event_type),
                   ("ce_subject", key), *shared, *index_header(index)]
        if normalized and index in normalized:
            headers.append(("bridge_normalized", orjson.dumps(normalized[index])))
        records.append(Record(topic, key, value, headers))
    return records


_INDEXES = tuple((("ce_pushindex", str(n).encode()),) for n in range(1000))  # the first events' of a push


def index_header(index: int) -> tuple[tuple[str, bytes]]:
    return _INDEXES[index] if index < len(_INDEXES) else (("ce_pushindex", str(index).encode()),)


def dead_letter_record(topic: str, body: bytes, status: int, retcode: str, reason: str, node: str,
                       declared_length: int | None, received_at: float | None = None, replica: bytes = b"") -> Record:
    """A malformed push from an authenticated gateway, kept as received (the body is already bounded
    by the size limit; a body too large by its declared length alone was never read). `status` and
    `retcode` are what strict mode answers for it; `reason` names the problem."""
    received_at = time.time() if received_at is None else received_at
    headers = [
        ("ce_specversion", SPEC_VERSION),
        ("ce_id", uuid.uuid4().hex.encode()),
        ("ce_type", b"cc.bridge.quarantined_push"),
        ("ce_source", source_for(node)),
        ("ce_time", rfc3339(received_at)),
        ("content-type", b"application/octet-stream"),
        ("bridge_status", str(status).encode()),
        ("bridge_retcode", retcode.encode()),
        ("bridge_reason", reason.encode()),
        ("bridge_body_length", str(len(body) if declared_length is None else declared_length).encode()),
    ]
    if replica:
        headers.append(("bridge_replica", replica))
    return Record(topic, None, body, headers)
