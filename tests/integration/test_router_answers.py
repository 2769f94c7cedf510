"""Through the shipped router, malformed, oversized, slow and odd requests get an answer of the
contract (docs/contracts/openapi.yaml) or none at all: a replica's answer as documented, one of the
router's own (x-router: the bridge's JSON shape, its Content-Type and codes), or the connection
closed without an answer (what the router does with HTTP its parser refuses and with requests not
complete in time). Never anything else: no HTML page, no other Content-Type, no other shape.

10,000 requests, each on a TLS connection of its own, built from a seeded random mix of changes to
a gateway's push: request line, headers, body, framing, and the pace at which they are sent.
"""
from __future__ import annotations

import asyncio
import random
import ssl
import time
import uuid
from collections import Counter
from dataclasses import dataclass

import orjson
import pytest
from conftest import GUID, TOKEN, client_context
from contract_docs import OpenApi
from test_router import replica_env, start_all

from tests.support import PUSH_PATH, BridgeProcess, Router

pytestmark = [pytest.mark.integration,
              pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")]

REQUESTS = 10_000
SLOW = 40             # of which sent slower than the router's 5 s deadlines allow
AT_ONCE = 48          # connections open at the same time
CONTRACT = OpenApi()


@pytest.fixture(scope="module")
def topic() -> str:
    return f"test.router.answers.{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def router(kafka, tls_dir, topic, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("router-answers")
    replicas = start_all([BridgeProcess(replica_env(kafka, topic, f"replica-{n}"), tls_dir) for n in (1, 2)], workdir)
    process = Router(replicas, tls_dir, workdir)
    try:
        yield process.start()
    finally:
        process.stop()
        for replica in replicas:
            replica.stop()


# -- the requests ----------------------------------------------------------------------------------

@dataclass
class Request:
    method: str
    path: str
    parts: list[bytes]     # sent one after the other, `pause` seconds apart
    pause: float = 0.0


def push_body(rng: random.Random) -> bytes:
    work_no: object = rng.choice(["600001", 600002, "", None, "x" * 200, "a\u0001b", "60\r\n01", "\u00e9t\u00e9"])
    events = [{"eventType": rng.choice(["AgentState_Ready", "", 7]), "workNo": work_no, "content": {"n": i}}
              for i in range(rng.choice([0, 1, 3, 50]))]
    push = {"eventList": events, "workNo": work_no} if rng.random() < 0.3 else {"workNo": work_no, "eventList": events}
    return orjson.dumps(push)


BODIES = [
    lambda rng: push_body(rng),
    lambda rng: b"",
    lambda rng: b'{"workNo": "600003", "eventList": [',
    lambda rng: b'{"workNo": "\xff\xfe", "eventList": []}',
    lambda rng: b"[1, 2, 3]",
    lambda rng: b"null",
    lambda rng: bytes(rng.getrandbits(8) for _ in range(rng.choice([1, 100, 3000]))),
    lambda rng: orjson.dumps({"workNo": "600004", "eventList": [{"eventType": "A", "content": "x" * 70_000}]}),
    lambda rng: orjson.dumps({"workNo": "600005", "eventList": [{"eventType": "A"}] * 2000}),
    lambda rng: b'{"workNo": "600006", "eventList": [' + b"[" * 300 + b"]" * 300 + b"]}",
]
METHODS = ["POST"] * 6 + ["GET", "HEAD", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT", "FOO", "post", "PO ST",
                          "P\x00ST", ""]
PATHS = [PUSH_PATH] * 6 + [PUSH_PATH + "?workNo=600007", PUSH_PATH + "?workNo=%0D%0Ax", PUSH_PATH + "/", "/",
                           "/other", "*", "http://router" + PUSH_PATH, "/" + "a" * 9000, "/" + "a" * 40_000,
                           PUSH_PATH + "?workNo=" + "9" * 300, "/%00", "/a b", "/\u00e9".encode().decode("latin-1"), ""]
VERSIONS = ["HTTP/1.1"] * 8 + ["HTTP/1.0", "HTTP/2.0", "HTTP/9.9", "HTTP/1.1 x", "http/1.1", ""]


def headers_for(rng: random.Random, body: bytes) -> list[tuple[str, str]]:
    headers = [("Host", "router"), ("Guid", GUID), ("service_token", TOKEN),
               ("Content-Type", "application/json; charset=UTF-8"), ("Content-Length", str(len(body)))]
    for _ in range(rng.choice([0, 0, 1, 1, 2, 3])):
        change = rng.randrange(17)
        if change == 0:
            headers = [h for h in headers if h[0] != rng.choice(["Host", "Guid", "service_token", "Content-Type"])]
        elif change == 1:
            headers.append(("Content-Length", str(len(body) + rng.choice([0, 1, 10]))))
        elif change == 2:
            headers.append(("Transfer-Encoding", rng.choice(["chunked", "gzip", "chunked, gzip", "gzip, chunked", "x"])))
        elif change == 3:
            headers = [(n, v if n != "Content-Length" else rng.choice(["-1", "abc", "9" * 30, " 5", "1e3"]))
                       for n, v in headers]
        elif change == 4:
            headers.append((rng.choice(["Bad Header", "X\x01", "", ":x", "X\u00e9"]), "value"))
        elif change == 5:
            headers.append(("X-Padding", "p" * rng.choice([1000, 8000, 15_500, 20_000, 40_000])))
        elif change == 6:
            headers += [(f"X-Many-{n}", "v") for n in range(rng.choice([100, 500]))]
        elif change == 7:
            headers.append(("Expect", rng.choice(["100-continue", "nothing"])))
        elif change == 8:
            headers += [("Connection", "Upgrade, HTTP2-Settings"), ("Upgrade", rng.choice(["h2c", "websocket"]))]
        elif change == 9:
            headers.append(("X-Folded", "a\r\n folded"))
        elif change == 10:
            headers.append(("X-Nul", "a\x00b"))
        elif change == 11:
            headers = [(n, v if n != "Guid" else rng.choice(["", "x", GUID + ".n/ode", "279fe21d"])) for n, v in headers]
        elif change == 12:
            headers = [(n, v if n != "service_token" else rng.choice(["", "x" * 60, "a$b", "wrong"])) for n, v in headers]
        elif change == 13:
            headers = [(n, v if n != "Content-Type" else rng.choice(["text/plain", "application/json; charset=latin-1",
                                                                     "", "a/b/c"])) for n, v in headers]
        elif change == 14:
            headers.append(("x-cc-route-key", "forged"))
        elif change == 15:
            headers.append(("Connection", rng.choice(["close", "keep-alive", "x"])))
        else:
            rng.shuffle(headers)
    return headers


def chunked(body: bytes, rng: random.Random) -> bytes:
    if rng.random() < 0.7:
        return b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:7], body[7:]) if part) + b"0\r\n\r\n"
    return rng.choice([b"zz\r\nabc\r\n0\r\n\r\n", b"ffffffffffffffffff\r\n", b"5\r\nabc\r\n", b"0\r\n"])


def make_request(rng: random.Random, slow: bool) -> Request:
    body = rng.choice(BODIES)(rng)
    method, path, version = rng.choice(METHODS), rng.choice(PATHS), rng.choice(VERSIONS)
    headers = headers_for(rng, body)
    if any(n == "Transfer-Encoding" and "chunked" in v for n, v in headers):
        body = chunked(body, rng)
    eol = b"\n" if rng.random() < 0.03 else b"\r\n"
    line = f"{method} {path} {version}".encode("latin-1") if rng.random() > 0.02 else rng.choice(
        [b"GARBAGE", b"\x16\x03\x01\x00", b"", b"GET /\r\n"])
    head = line + eol + b"".join(f"{n}: {v}".encode("latin-1") + eol for n, v in headers) + eol
    if rng.random() < 0.02:
        return Request(method, path, [bytes(rng.getrandbits(8) for _ in range(rng.choice([10, 5000])))])
    if not slow:
        return Request(method, path, [head + body])
    # Slow: a head never finished, or a body that stops short of its length; then silence.
    cut = rng.choice([len(head) // 2, len(head) + len(body) // 2])
    return Request(method, path, [(head + body)[:cut], (head + body)[cut:cut + 1]], pause=rng.choice([1.0, 3.0]))


# -- sending them ----------------------------------------------------------------------------------

@dataclass
class Outcome:
    request: Request
    status: int | None      # None: closed without an answer
    headers: dict[str, str]
    body: bytes
    raw: bytes


async def read_answer(reader: asyncio.StreamReader, to_head: bool) -> tuple[bytes, int | None, dict[str, str], bytes]:
    """The first final answer: (everything read, status, headers, body); status None when the
    connection closed without one. Interim 100 Continue answers are skipped; the answer to a HEAD
    request (`to_head`) has no body, whatever its Content-Length says."""
    raw = b""
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            return raw + exc.partial, None, {}, b""
        raw += head
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1]) if lines[0].startswith("HTTP/") and len(lines[0].split()) > 1 else -1
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        if status == 100:
            continue
        length = 0 if to_head else int(headers.get("content-length", "0") or 0)
        try:
            body = await reader.readexactly(length)
        except asyncio.IncompleteReadError as exc:
            body = exc.partial
        return raw + body, status, headers, body


async def send(router: Router, context: ssl.SSLContext, request: Request) -> Outcome:
    reader, writer = await asyncio.open_connection("127.0.0.1", router.port, ssl=context, server_hostname="localhost")
    try:
        for n, part in enumerate(request.parts):
            if n:
                await asyncio.sleep(request.pause)
            writer.write(part)
            await writer.drain()
        raw, status, headers, body = await asyncio.wait_for(read_answer(reader, request.method == "HEAD"), 20)
    except (ConnectionError, ssl.SSLError):
        raw, status, headers, body = b"", None, {}, b""
    except TimeoutError:  # neither an answer nor a close: outside the contract too (see problems)
        raw, status, headers, body = b"<nothing for 20 s>", None, {}, b""
    finally:
        writer.transport.abort()
    return Outcome(request, status, headers, body, raw)


def problems(outcome: Outcome) -> list[str]:
    """Why an answer is outside the contract ([] when it is in it, or when there is none)."""
    if outcome.status is None:  # closed without a final answer (after a 100 Continue, perhaps)
        rest = outcome.raw.replace(b"HTTP/1.1 100 Continue\r\n\r\n", b"")
        return [] if not rest else [f"bytes that are no HTTP answer: {outcome.raw[:120]!r}"]
    if not outcome.raw.startswith(b"HTTP/1.1 "):
        return [f"not an HTTP/1.1 answer: {outcome.raw[:120]!r}"]
    head = outcome.request.method == "HEAD"
    documented = [where for where, responses in CONTRACT.operations(router=True).items()
                  if str(outcome.status) in responses]
    if not documented:
        return [f"status {outcome.status} is documented nowhere: {outcome.raw[:200]!r}"]
    found = [CONTRACT.answer_problems(where, outcome.status, outcome.headers, outcome.body, head=head)
             for where in documented]
    return [] if [] in found else [f"{outcome.raw[:300]!r}: {min(found, key=len)}"]


async def test_no_answer_outside_the_contract(router, tls_dir):
    rng = random.Random(20261207)
    requests = [make_request(rng, slow=n < SLOW) for n in range(REQUESTS)]
    context = client_context(tls_dir)
    gate = asyncio.Semaphore(AT_ONCE)

    async def one(request: Request) -> Outcome:
        async with gate:
            return await send(router, context, request)

    started = time.monotonic()
    # The slow ones first, so that they hold connections while the rest go through.
    outcomes = await asyncio.gather(*(one(r) for r in requests))
    elapsed = time.monotonic() - started
    wrong = {n: found for n, outcome in enumerate(outcomes) if (found := problems(outcome))}
    seen = Counter((o.status, orjson.loads(o.body).get("retcode") if o.status and o.body[:1] == b"{" else None)
                   for o in outcomes)
    print(f"\n{REQUESTS} requests in {elapsed:.0f} s; answers (status, retcode): "
          + ", ".join(f"{k}: {v}" for k, v in sorted(seen.items(), key=lambda kv: -kv[1])))
    assert not wrong, f"{len(wrong)} answers outside the contract, e.g. {list(wrong.items())[:5]}"
    # The mix reached every kind of outcome it is there for: a replica's success and refusals, the
    # router's own JSON, and connections closed without an answer.
    statuses = {status for status, _ in seen}
    assert {200, 400, 401, 403, 404, 405, None} <= statuses, statuses
    slow = [o for o in outcomes[:SLOW] if o.status is None]
    assert len(slow) >= SLOW // 2, "requests slower than the deadlines are closed without an answer"


async def test_the_routers_own_answer_when_no_replica_can_take_the_push(tls_dir, kafka, topic, tmp_path):
    """With its only replica gone, the router answers 503 itself, exactly as x-router documents it
    (JSON, Content-Type, retcode 100-007, Retry-After)."""
    gone = BridgeProcess(replica_env(kafka, topic, "gone"), tls_dir)  # never started: its port refuses
    process = Router([gone], tls_dir, tmp_path).start()
    try:
        body = orjson.dumps({"workNo": "600009", "eventList": [{"eventType": "AgentState_Ready"}]})
        head = (f"POST {PUSH_PATH} HTTP/1.1\r\nHost: router\r\nGuid: {GUID}\r\nservice_token: {TOKEN}\r\n"
                f"Content-Type: application/json; charset=UTF-8\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        outcome = await send(process, client_context(tls_dir), Request("POST", PUSH_PATH, [head + body]))
    finally:
        process.stop()
    assert outcome.status == 503, outcome.raw
    assert CONTRACT.answer_problems("router", 503, outcome.headers, outcome.body) == []
    assert orjson.loads(outcome.body) == {"message": "no replica could take the push; retry later", "retcode": "100-007"}
