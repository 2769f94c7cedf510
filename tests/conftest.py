"""Shared test fixtures: real TLS material, real Kafka, and bridge processes.

The broker (`kafka`) is started once per test session by the project's own deploy/kafka-local
script, on free loopback ports in a temporary directory, with an SSL listener that requires client
certificates; it is stopped when the session ends. Tests that stop, kill or freeze a broker take
`disposable_kafka` instead (a broker of their module's own), and the cluster drills take
`kafka_cluster` (three nodes). Bridges run as real `python -m bridge serve` processes over HTTPS,
each module with topics of its own. The processes themselves are tests.support's, shared with the
fault drills and the benchmarks.
"""
from __future__ import annotations

import ssl
import uuid
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from bench.verify import read_committed
from tests.support import BridgeProcess, Broker, Cluster, make_tls

TOKEN = "Tok3n-for_tests"
GUID = "279fe21d-1b2c-4d3e-9f00-aabbccddeeff.AgentGateway1"


@pytest.fixture(scope="session")
def tls_dir(tmp_path_factory) -> Path:
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def kafka(tmp_path_factory, tls_dir) -> Broker:
    """The session's broker; tests must leave it running."""
    broker = Broker(tmp_path_factory.mktemp("kafka"), tls_dir)
    try:
        yield broker.start()
    finally:
        broker.stop()


@pytest.fixture(scope="module")
def disposable_kafka(tmp_path_factory, tls_dir) -> Broker:
    """A broker of the requesting module's own, which its tests may stop, kill, freeze and restart."""
    broker = Broker(tmp_path_factory.mktemp("disposable-kafka"), tls_dir)
    try:
        yield broker.start()
    finally:
        broker.kill()


@pytest.fixture(scope="module")
def kafka_cluster(tmp_path_factory, tls_dir) -> Cluster:
    """A three-node cluster of the requesting module's own (replication factor 3, min ISR 2)."""
    nodes = Cluster(tmp_path_factory.mktemp("kafka-cluster"), tls_dir)
    try:
        yield nodes.start()
    finally:
        nodes.kill()


@pytest.fixture(scope="module")
def topic() -> str:
    return f"test.events.{uuid.uuid4().hex[:10]}"


def bridge_env(kafka: Broker, topic: str, **extra: str) -> dict[str, str]:
    return {**kafka.bridge_env(), "BRIDGE_TOPIC": topic, "BRIDGE_SERVICE_TOKENS": f"{TOKEN},second-token",
            "BRIDGE_CREATE_TOPICS": "true", "BRIDGE_TOPIC_PARTITIONS": "6", **extra}


@pytest.fixture(scope="module")
def bridge(kafka, tls_dir, topic, tmp_path_factory) -> BridgeProcess:
    process = BridgeProcess(bridge_env(kafka, topic), tls_dir).start(tmp_path_factory.mktemp("logs"))
    yield process
    process.stop()


def client_context(tls_dir: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(tls_dir / "ca.pem"))


def push_headers(**overrides: str | None) -> dict[str, str]:
    headers = {"Content-Type": "application/json; charset=UTF-8", "Guid": GUID, "service_token": TOKEN}
    headers.update(overrides)
    return {k: v for k, v in headers.items() if v is not None}


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()


class Http:
    """A keep-alive HTTPS client that trusts the test CA (aiohttp: fast enough to load the bridge)."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    async def request(self, method: str, url: str, body: bytes | None = None,
                      headers: dict[str, str] | None = None, allow_redirects: bool = True) -> Reply:
        async with self._session.request(method, url, data=body, headers=headers,
                                         allow_redirects=allow_redirects) as response:
            return Reply(response.status, {k.lower(): v for k, v in response.headers.items()},
                         await response.read())

    async def post(self, url: str, body: bytes | None, headers: dict[str, str] | None = None) -> Reply:
        return await self.request("POST", url, body, headers)


@pytest.fixture
async def client(tls_dir) -> Http:
    connector = aiohttp.TCPConnector(ssl=client_context(tls_dir), limit=64)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60),
                                     skip_auto_headers=["Content-Type"]) as session:
        yield Http(session)


async def read_topics(kafka: Broker, topics: list[str], timeout: float = 60.0) -> list:
    """Every record currently in `topics` (committed data), partition by partition in offset order."""
    return await read_committed(kafka.client_options(), topics, timeout)


def headers_of(record) -> dict[str, str]:
    return {k: v.decode() for k, v in record.headers}
