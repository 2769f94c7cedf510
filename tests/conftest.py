"""Shared test fixtures: real TLS material, a real Kafka broker, and bridge processes.

The broker is started once per test session by the project's own deploy/kafka-local script, on
free loopback ports in a temporary directory, with an SSL listener that requires client
certificates; it is stopped when the session ends. Bridges run as real `python -m bridge serve`
processes over HTTPS, each module with topics of its own.
"""
from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.helpers import create_ssl_context

ROOT = Path(__file__).resolve().parent.parent
PUSH_PATH = "/service-cloud/rest/cc-ai/v1/agentevent/pushresult"
TOKEN = "Tok3n-for_tests"
GUID = "279fe21d-1b2c-4d3e-9f00-aabbccddeeff.AgentGateway1"


def load_kafkalocal():
    spec = importlib.util.spec_from_file_location("kafkalocal", ROOT / "deploy" / "kafka-local" / "kafkalocal.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Kafka:
    home: Path
    tls: Path
    port: int
    ssl_port: int
    controller_port: int

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.ssl_port}"

    def client_options(self) -> dict:
        return {
            "bootstrap_servers": self.bootstrap,
            "security_protocol": "SSL",
            "ssl_context": create_ssl_context(cafile=self.tls / "ca.pem", certfile=self.tls / "server.pem",
                                              keyfile=self.tls / "server.key"),
        }

    def bridge_env(self) -> dict[str, str]:
        return {
            "BRIDGE_KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "BRIDGE_KAFKA_SECURITY_PROTOCOL": "SSL",
            "BRIDGE_KAFKA_SSL_CAFILE": str(self.tls / "ca.pem"),
            "BRIDGE_KAFKA_SSL_CERTFILE": str(self.tls / "server.pem"),
            "BRIDGE_KAFKA_SSL_KEYFILE": str(self.tls / "server.key"),
        }


@pytest.fixture(scope="session")
def tls_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tls")
    subprocess.run([str(ROOT / "deploy" / "tls" / "make-dev-certs.sh"), str(out)], check=True,
                   stdout=subprocess.DEVNULL)
    return out


@pytest.fixture(scope="session")
def kafka(tmp_path_factory, tls_dir) -> Kafka:
    kafkalocal = load_kafkalocal()
    broker = Kafka(tmp_path_factory.mktemp("kafka"), tls_dir, free_port(), free_port(), free_port())
    kafkalocal.start(broker.home, broker.port, broker.ssl_port, broker.controller_port, tls_dir)
    yield broker
    kafkalocal.stop(broker.home)


@dataclass
class Bridge:
    """A `python -m bridge serve` process on a free port."""

    env: dict[str, str]
    tls: Path | None
    port: int = field(default_factory=free_port)
    management_port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    log_path: Path | None = None

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.management_port}"

    @property
    def url(self) -> str:
        scheme = "http" if self.tls is None else "https"
        return f"{scheme}://127.0.0.1:{self.port}{PUSH_PATH}"

    def start(self, log_dir: Path, wait: bool = True, ready: bool = True) -> "Bridge":
        env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
        env.update(self.env, BRIDGE_PORT=str(self.port), BRIDGE_HOST="127.0.0.1",
                   BRIDGE_MANAGEMENT_PORT=str(self.management_port))
        if self.tls is not None:
            env.update(BRIDGE_TLS_CERTFILE=str(self.tls / "server.pem"), BRIDGE_TLS_KEYFILE=str(self.tls / "server.key"))
        self.log_path = log_dir / f"bridge-{self.port}.log"
        self.proc = subprocess.Popen([sys.executable, "-m", "bridge", "serve"], env=env, cwd=ROOT,
                                     stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT)
        if wait:
            self.wait_listening()
        if wait and ready:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Poll /readyz like an orchestrator would before routing traffic here."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(self.management_url + "/readyz", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"bridge not ready:\n{self.log()}")
            time.sleep(0.1)

    def wait_listening(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"bridge exited with {self.proc.returncode}:\n{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                socket.create_connection(("127.0.0.1", self.management_port), timeout=0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"bridge not listening after {timeout}s:\n{self.log()}")
                time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path and self.log_path.exists() else ""

    async def astop(self, sig: int = signal.SIGTERM) -> int:
        """stop() for async tests: the event loop stays free, so in-process clients can answer
        the TLS close_notify the bridge sends when it closes their keep-alive connections."""
        return await asyncio.to_thread(self.stop, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


@pytest.fixture(scope="module")
def topic() -> str:
    return f"test.events.{uuid.uuid4().hex[:10]}"


def bridge_env(kafka: Kafka, topic: str, **extra: str) -> dict[str, str]:
    return {**kafka.bridge_env(), "BRIDGE_TOPIC": topic, "BRIDGE_SERVICE_TOKENS": f"{TOKEN},second-token",
            "BRIDGE_CREATE_TOPICS": "true", "BRIDGE_TOPIC_PARTITIONS": "6", **extra}


@pytest.fixture(scope="module")
def bridge(kafka, tls_dir, topic, tmp_path_factory) -> Bridge:
    process = Bridge(bridge_env(kafka, topic), tls_dir).start(tmp_path_factory.mktemp("logs"))
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
                      headers: dict[str, str] | None = None) -> Reply:
        async with self._session.request(method, url, data=body, headers=headers) as response:
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


async def read_topics(kafka: Kafka, topics: list[str], timeout: float = 60.0) -> list:
    """Every record currently in `topics` (committed data), partition by partition in offset order."""
    consumer = AIOKafkaConsumer(**kafka.client_options(), enable_auto_commit=False,
                                isolation_level="read_committed")
    await consumer.start()
    try:
        partitions = [TopicPartition(t, p) for t in topics for p in (consumer.partitions_for_topic(t) or ())]
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = [TopicPartition(t, p) for t in topics for p in (consumer.partitions_for_topic(t) or ())]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        end = await consumer.end_offsets(partitions)
        records = []
        deadline = time.monotonic() + timeout
        while True:
            behind = [tp for tp in partitions if await consumer.position(tp) < end[tp]]
            if not behind:
                break
            if time.monotonic() > deadline:
                raise AssertionError("timed out reading back the topics")
            batch = await consumer.getmany(timeout_ms=500)
            for tp_records in batch.values():
                records.extend(tp_records)
        return records
    finally:
        await consumer.stop()


def headers_of(record) -> dict[str, str]:
    return {k: v.decode() for k, v in record.headers}
