"""The agent-affine router: the shipped compose router configuration (deploy/compose/router.cfg) run
by the real HAProxy 2.8 in front of three real bridge processes and the real broker.

The client shares a few keep-alive connections among many agents, as the gateway's pooled Java
client does: with a connection per agent, any balancer would keep an agent on one replica by
accident. Which replica accepted a push is read back from Kafka (every record names it in its
`bridge_replica` header); the router's own log says which connection carried which push.
"""
from __future__ import annotations

import asyncio
import random
import re
import socket
import ssl
import time
import urllib.request
import uuid
from collections import defaultdict
from pathlib import Path

import aiohttp
import orjson
import pytest
from conftest import bridge_env, client_context, headers_of, push_headers, read_topics

from tests.support import ROUTER_KEY_HEADER, BridgeProcess, Router, RouterRequest, certificate_for, make_tls

pytestmark = [pytest.mark.integration,
              pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")]

REPLICAS = 3
AGENTS = 60
CONNECTIONS = 4  # the pooled client's connections, shared by all agents
OK = {"message": "success", "retcode": "0"}


# -- the processes --------------------------------------------------------------------------------

def replica_env(kafka, topic: str, name: str) -> dict[str, str]:
    return bridge_env(kafka, topic, BRIDGE_REPLICA_NAME=name, BRIDGE_ROUTER_KEY_HEADER=ROUTER_KEY_HEADER,
                      BRIDGE_LOG_LEVEL="warning")


def start_all(processes: list[BridgeProcess], logs: Path) -> list[BridgeProcess]:
    """Start bridge processes side by side, then wait until each is ready."""
    for process in processes:
        process.start(logs, wait=False)
    for process in processes:
        process.wait()
    return processes


@pytest.fixture(scope="module")
def topic() -> str:
    return f"test.router.{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def replicas(kafka, tls_dir, topic, tmp_path_factory) -> list[BridgeProcess]:
    processes = [BridgeProcess(replica_env(kafka, topic, f"replica-{n}"), tls_dir) for n in range(1, REPLICAS + 1)]
    try:
        yield start_all(processes, tmp_path_factory.mktemp("logs"))
    finally:
        for process in processes:
            process.stop()


@pytest.fixture(scope="module")
def router(replicas, tls_dir, tmp_path_factory) -> Router:
    process = Router(replicas, tls_dir, tmp_path_factory.mktemp("router"))
    try:
        yield process.start()
    finally:
        process.stop()


@pytest.fixture
async def pooled(tls_dir) -> aiohttp.ClientSession:
    """A pooled client: CONNECTIONS keep-alive connections, whatever the number of agents."""
    connector = aiohttp.TCPConnector(ssl=client_context(tls_dir), limit=CONNECTIONS)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60),
                                     skip_auto_headers=["Content-Type"]) as session:
        yield session


# -- pushes and what became of them ---------------------------------------------------------------

def agents(first: int, count: int = AGENTS) -> list[str]:
    return [str(first + n) for n in range(count)]


def body(work_no: str, phase: str, *, numeric: bool = False, work_no_last: bool = False, events: int = 2,
         padding: int = 0) -> bytes:
    """A push of `events` events tagged with `phase`; workNo as a number or a string, first or last."""
    event_list = [{"eventType": "AgentState_Ready", "workNo": work_no,
                   "content": {"phase": phase, "seq": i, "pad": "x" * padding}} for i in range(events)]
    agent = int(work_no) if numeric else work_no
    push = {"eventList": event_list, "workNo": agent} if work_no_last else {"workNo": agent, "eventList": event_list}
    return orjson.dumps(push)


async def post(session: aiohttp.ClientSession, url: str, data: bytes, **headers: str) -> tuple[int, dict]:
    async with session.post(url, data=data, headers={**push_headers(), **headers}) as response:
        return response.status, orjson.loads(await response.read())


async def push_all(session: aiohttp.ClientSession, url: str, work_nos: list[str], phase: str, **options) -> None:
    """One push per agent, all at once over the pool, in an order of their own each time (as the
    gateway's would be); each must be answered "0"."""
    forged = {ROUTER_KEY_HEADER: "forged-by-the-client"}
    order = random.Random(phase).sample(work_nos, len(work_nos))
    answers = await asyncio.gather(*(post(session, url, body(w, phase, **options), **forged) for w in order))
    assert all(answer == (200, OK) for answer in answers), [a for a in answers if a != (200, OK)][:5]


async def placement(kafka, topic: str, phase: str) -> dict[str, set[str]]:
    """agent -> the replicas that accepted its pushes of `phase` (from the records' headers)."""
    found: dict[str, set[str]] = defaultdict(set)
    for record in await read_topics(kafka, [topic]):
        event = orjson.loads(record.value)
        if isinstance(event.get("content"), dict) and event["content"].get("phase") == phase:
            found[record.key.decode()].add(headers_of(record)["bridge_replica"])
    return dict(found)


def only(found: dict[str, set[str]]) -> dict[str, str]:
    """agent -> its one replica; fails for an agent whose pushes went to several."""
    spread = {agent: sorted(names) for agent, names in found.items() if len(names) != 1}
    assert not spread, f"{len(spread)} agents' pushes reached several replicas, e.g. {list(spread.items())[:5]}"
    return {agent: next(iter(names)) for agent, names in found.items()}


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def metric(process: BridgeProcess, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", get(process.management_url + "/metrics"), re.M)
    return float(match.group(1)) if match else 0.0


async def logged(router: Router, wanted, count: int, timeout: float = 10.0) -> list[RouterRequest]:
    """The router's log lines for which `wanted(line)` holds, once there are `count` of them (a line
    is written when its exchange ends, which may be just after the client has its answer)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [r for r in router.requests() if wanted(r)]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        await asyncio.sleep(0.1)


MISSES = ('bridge_affinity_misses_total{reason="no_key"}', 'bridge_affinity_misses_total{reason="other_agent"}')


def misses(processes: list[BridgeProcess]) -> dict[str, float]:
    return {f"{p.env['BRIDGE_REPLICA_NAME']} {m}": metric(p, m) for p in processes for m in MISSES}


# -- the tests ------------------------------------------------------------------------------------

async def test_every_push_of_an_agent_reaches_one_replica(router, replicas, pooled, kafka, topic):
    """60 agents over 4 shared connections, three rounds: workNo as a string, as a number, and last
    in the body. Every push also carries a forged routing header, which the router must drop."""
    before = misses(replicas)
    work_nos = agents(500001)
    for n, options in enumerate(({}, {"numeric": True}, {"work_no_last": True})):
        await push_all(pooled, router.url, work_nos, f"affinity-{n}", **options)
    found: dict[str, set[str]] = defaultdict(set)
    for n in range(3):
        for agent, names in (await placement(kafka, topic, f"affinity-{n}")).items():
            found[agent] |= names
    where = only(found)
    assert sorted(where) == work_nos
    per_replica = defaultdict(list)
    for agent, replica in where.items():
        per_replica[replica].append(agent)
    assert sorted(per_replica) == [f"replica-{n}" for n in range(1, REPLICAS + 1)], \
        f"agents per replica: { {r: len(a) for r, a in per_replica.items()} }"
    assert misses(replicas) == before, "a replica saw a push routed without its agent's key"
    # The router's side: few connections, each carrying many agents to several replicas, request by
    # request, each hashed on its own agent.
    lines = await logged(router, lambda r: r.key in where, 3 * AGENTS)
    assert len(lines) == 3 * AGENTS and all(r.status == 200 and not r.redispatched for r in lines)
    servers_of: dict[str, set[str]] = defaultdict(set)
    for request in lines:
        servers_of[request.client].add(request.server)
    assert len(servers_of) <= CONNECTIONS, f"{len(servers_of)} client connections for a pool of {CONNECTIONS}"
    assert max(len(s) for s in servers_of.values()) == REPLICAS, \
        f"no shared connection carried pushes to every replica: {dict(servers_of)}"


async def test_agent_named_in_the_url_decides(router, replicas, pooled, kafka, topic):
    """A per-agent callback URL (?workNo=) routes like the body's workNo, and takes precedence."""
    work_nos = agents(510001, 20)
    await push_all(pooled, router.url, work_nos, "url-body")
    by_body = only(await placement(kafka, topic, "url-body"))
    await asyncio.gather(*(post(pooled, f"{router.url}?workNo={w}", body(w, "url-both")) for w in work_nos))
    assert only(await placement(kafka, topic, "url-both")) == by_body
    # The URL names agent b; the body is agent a's, whose own replica is another one.
    a = work_nos[0]
    b = next(w for w in work_nos if by_body[w] != by_body[a])
    target = next(p for p in replicas if p.env["BRIDGE_REPLICA_NAME"] == by_body[b])
    other_agent = 'bridge_affinity_misses_total{reason="other_agent"}'
    counted = metric(target, other_agent), metric(target, "bridge_url_agent_mismatches_total")
    assert await post(pooled, f"{router.url}?workNo={b}", body(a, "url-mismatch")) == (200, OK)
    assert only(await placement(kafka, topic, "url-mismatch")) == {a: by_body[b]}
    assert (metric(target, other_agent), metric(target, "bridge_url_agent_mismatches_total")) == \
        (counted[0] + 1, counted[1] + 1)


async def test_workno_beyond_the_routers_buffer_is_accepted_and_counted(router, replicas, pooled, kafka, topic):
    """A body whose workNo comes after more than the router's buffer (16 KiB) reaches some replica
    all the same, which answers "0" and counts the push as routed without a key (the client's own
    copy of the routing header is dropped). The same body with workNo first is routed by it."""
    work_no = "520001"
    large = {"events": 300, "padding": 100}  # about 45 KB
    assert len(body(work_no, "x", **large)) > 40_000
    before = misses(replicas)
    assert await post(pooled, router.url, body(work_no, "beyond", work_no_last=True, **large),
                      **{ROUTER_KEY_HEADER: work_no}) == (200, OK)
    assert await post(pooled, router.url, body(work_no, "ahead", **large)) == (200, OK)
    after = misses(replicas)
    changed = {name: after[name] - before[name] for name in after if after[name] != before[name]}
    assert len(changed) == 1 and list(changed.values()) == [1.0] and next(iter(changed)).endswith('"no_key"}'), changed
    lines = await logged(router, lambda r: r.key in (None, work_no), 2)
    assert [r.key for r in lines[-2:]] == [None, work_no]
    assert only(await placement(kafka, topic, "beyond")) and only(await placement(kafka, topic, "ahead"))


def handshake(port: int, cafile: Path, version: ssl.TLSVersion, ciphers: str | None = None) -> tuple[str, str]:
    """A TLS handshake pinned to one version (and, for TLS 1.2, to `ciphers`): (version, suite)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile)
    context.minimum_version = context.maximum_version = version
    if version < ssl.TLSVersion.TLSv1_2:
        context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client really offer the old protocol
    elif ciphers:
        context.set_ciphers(ciphers)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        return tls.version(), tls.cipher()[0]


def test_router_speaks_tls_1_2_and_1_3_only_with_forward_secret_suites(router, tls_dir):
    cafile = tls_dir / "ca.pem"
    assert handshake(router.port, cafile, ssl.TLSVersion.TLSv1_3)[0] == "TLSv1.3"
    version, suite = handshake(router.port, cafile, ssl.TLSVersion.TLSv1_2)
    assert version == "TLSv1.2" and suite.startswith("ECDHE-") and ("GCM" in suite or "CHACHA20" in suite), suite
    with pytest.raises(ssl.SSLError, match=r"(?i)alert.protocol.version"):
        handshake(router.port, cafile, ssl.TLSVersion.TLSv1_1)
    # A TLS 1.2 client offering only suites without AEAD (CBC with SHA-1 or SHA-2) is refused.
    with pytest.raises(ssl.SSLError, match=r"(?i)alert.handshake.failure"):
        handshake(router.port, cafile, ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES128-SHA256")
    # The router's own management port: plain HTTP, its own health.
    assert get(router.management_url + "/readyz") == "ready"


async def test_router_uses_no_replica_whose_certificate_it_cannot_verify(replicas, kafka, topic, tls_dir,
                                                                          pooled, tmp_path):
    """Two replicas that pass the health check (plain HTTP) but cannot be trusted: one whose
    certificate comes from another CA, one whose certificate (from the right CA) names another host.
    Each behind a router of its own with replica-1: no push may reach them. The router fails the
    handshake with them and answers their agents' pushes itself, 503 in the bridge's JSON shape
    (the gateway retries them); it never hands them to replica-1, which would take those agents
    away from the replica the hash gives them."""
    foreign = make_tls(tmp_path / "foreign-ca")
    misnamed = certificate_for(tls_dir, "elsewhere.invalid", tmp_path / "misnamed")
    rogues = [BridgeProcess(replica_env(kafka, topic, "foreign-ca"), foreign),
              BridgeProcess(replica_env(kafka, topic, "misnamed"), misnamed)]
    try:
        start_all(rogues, tmp_path)
        for n, rogue in enumerate(rogues):
            router = Router([replicas[0], rogue], tls_dir, tmp_path).start()
            try:
                work_nos = agents(530001 + 100 * n, 20)
                phase = f"rogue-{rogue.env['BRIDGE_REPLICA_NAME']}"
                answers = dict(zip(work_nos, await asyncio.gather(
                    *(post(pooled, router.url, body(w, phase)) for w in work_nos)), strict=True))
                lines = await logged(router, lambda r, w=work_nos: r.key in w, len(work_nos))
                hashed = {r.key: r.server for r in lines}
                refused = {w for w, server in hashed.items() if server == "bridge2"}
                assert refused, f"no agent hashed to the rogue replica: {hashed}"
                for work_no, answer in answers.items():
                    expected = (503, {"retcode": "100-007", "message": "no replica could take the push; retry later"}) \
                        if work_no in refused else (200, OK)
                    assert answer == expected, (work_no, answer)
                assert not any(r.redispatched for r in lines)
                assert set(only(await placement(kafka, topic, phase))) == set(work_nos) - refused
                assert set(only(await placement(kafka, topic, phase)).values()) == {"replica-1"}
                assert metric(rogue, 'bridge_pushes_total{retcode="0"}') == 0
            finally:
                router.stop()
    finally:
        for rogue in rogues:
            rogue.stop()


async def test_only_a_departed_replicas_agents_move_and_they_come_back(router, replicas, pooled, kafka, topic):
    """Consistent hashing: with replica-2 stopped its agents go to the others and nobody else moves;
    once it is back, every agent is where it was."""
    work_nos = agents(540001)
    await push_all(pooled, router.url, work_nos, "ring-before")
    before = only(await placement(kafka, topic, "ring-before"))
    departed = replicas[1]
    await departed.astop()
    try:
        await asyncio.to_thread(router.wait_states, {"bridge2": "DOWN"})
        await push_all(pooled, router.url, work_nos, "ring-without")
        without = only(await placement(kafka, topic, "ring-without"))
    finally:
        await asyncio.to_thread(departed.start)
    await asyncio.to_thread(router.wait_states, {"bridge2": "UP"})
    await push_all(pooled, router.url, work_nos, "ring-after")
    after = only(await placement(kafka, topic, "ring-after"))

    moved = {agent for agent in work_nos if without[agent] != before[agent]}
    assert moved, "replica-2 had no agent to give away"
    assert all(before[agent] == "replica-2" for agent in moved), "agents of the remaining replicas moved"
    assert all(without[agent] != "replica-2" for agent in work_nos)
    assert {before[agent] for agent in moved} == {"replica-2"} and \
        len(moved) == sum(1 for agent in work_nos if before[agent] == "replica-2")
    assert after == before, "agents did not come back to replica-2"


async def agent_loop(session: aiohttp.ClientSession, url: str, work_no: str, phase: str, stop: asyncio.Event,
                     failures: list[tuple[str, int, object]]) -> int:
    """One agent as the gateway drives it: its next push only once the last one was answered; a
    failed push is sent again (after a short pause here, 10 s at the gateway) before the next."""
    seq = 0
    while not stop.is_set():
        data = orjson.dumps({"workNo": work_no, "eventList": [
            {"eventType": "AgentState_Ready", "workNo": work_no, "content": {"phase": phase, "seq": seq}}]})
        try:
            answer = await post(session, url, data)
        except (TimeoutError, aiohttp.ClientError) as exc:
            answer = (0, repr(exc))
        if answer == (200, OK):
            seq += 1
        else:
            failures.append((work_no, seq, answer))
            await asyncio.sleep(0.5)
        await asyncio.sleep(0.05)
    return seq


async def test_a_replica_stopped_and_started_under_load_fails_no_push_and_keeps_order(
        router, replicas, pooled, kafka, topic):
    """A planned departure: SIGTERM turns /readyz 404, the router stops sending at its next check
    while the replica still serves, and no push fails; order holds per agent across the move and
    the move back."""
    work_nos, phase = agents(560001, 40), "planned-departure"
    stop, failures = asyncio.Event(), []
    load = [asyncio.create_task(agent_loop(pooled, router.url, w, phase, stop, failures)) for w in work_nos]
    await asyncio.sleep(2)
    departed = replicas[1]
    before = len(router.requests())
    await departed.astop()
    await asyncio.to_thread(departed.start)
    await asyncio.to_thread(router.wait_states, {"bridge2": "UP"})
    await asyncio.sleep(3)
    stop.set()
    sent = dict(zip(work_nos, await asyncio.gather(*load), strict=True))
    during = router.requests()[before:]
    assert failures == [], f"{len(failures)} pushes failed, e.g. {failures[:5]}"
    assert any(r.server == "bridge2" for r in during), "the departing replica had agents to give away"
    tried_again = [r for r in during if r.retries != "0" or r.status != 200]
    assert not tried_again, f"the router met a closed port or no answer {len(tried_again)} times: {tried_again[:3]}"
    seen: dict[str, list[int]] = defaultdict(list)
    for record in await read_topics(kafka, [topic]):
        event = orjson.loads(record.value)
        content = event.get("content")
        if isinstance(content, dict) and content.get("phase") == phase:
            seen[record.key.decode()].append(content["seq"])
    for work_no in work_nos:
        first = list(dict.fromkeys(seen[work_no]))  # repeated ce_ids (a retry) dropped: the first of each kept
        assert first == list(range(sent[work_no])), f"agent {work_no}: {first[:20]}..."
