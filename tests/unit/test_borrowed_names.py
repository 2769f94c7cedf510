"""Names the bridge borrows from packages that do not publish them as API, held to the pinned
releases: each exists and has the shape the bridge relies on (parameters, attributes, what calls
what). A new release of uvicorn, httptools or aiokafka that moves one of them fails here rather
than on the push port. The pins themselves are compatible-release (~=) to the minor release in
constraints.txt. The module docstrings of bridge/http.py, bridge/listener.py,
bridge/kafka/patch.py and bridge/kafka/appends.py say why each name is borrowed; the aiokafka patch has tests of its own
(test_kafka_patch.py), and bridge/http.py's use of uvicorn's protocol is driven in
test_http_protocol.py."""
from __future__ import annotations

import asyncio
import inspect
import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httptools
import pytest
import uvicorn
from aiokafka import AIOKafkaClient, AIOKafkaProducer
from aiokafka.cluster import ClusterMetadata
from aiokafka.conn import create_conn
from aiokafka.producer.message_accumulator import BatchBuilder, MessageAccumulator, MessageBatch
from aiokafka.protocol import admin as admin_protocol
from aiokafka.structs import BrokerMetadata, TopicPartition
from uvicorn.config import STARTUP_FAILURE
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from bridge.connections import Limits
from bridge.http import BoundedProtocol, BridgeConfig
from bridge.listener import Server
from bridge.tls import Certificate

ROOT = Path(__file__).resolve().parents[2]
BORROWED_FROM = ("uvicorn", "httptools", "aiokafka")
LIMITS = Limits(max_connections=4, handshake_timeout_s=5, head_timeout_s=10, body_timeout_s=10, body_min_rate=1000,
                idle_timeout_s=65)


def bridge_config(**options: Any) -> BridgeConfig:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        pass

    return BridgeConfig(app, name="push", max_header_bytes=8192, limits=LIMITS, log_config=None, **options)


def parameters(function: Callable[..., Any]) -> list[tuple[str, Any]]:
    return [(p.name, p.kind) for p in inspect.signature(function).parameters.values()]


def names(function: Callable[..., Any]) -> set[str]:
    """The global and attribute names a function's code refers to."""
    return set(function.__code__.co_names)


# -- the pins -------------------------------------------------------------------------------------

def test_each_lender_is_pinned_to_the_minor_release_the_suite_ran_with() -> None:
    pinned = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M))
    server = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["server"]
    for package in BORROWED_FROM:
        major, minor, *_ = pinned[package].split(".")
        assert f"{package}~={major}.{minor}.0" in server, f"{package} is not pinned to {major}.{minor}"


# -- uvicorn: the HTTP protocol (bridge/http.py) -----------------------------------------------------

def test_every_handler_the_protocol_extends_has_uvicorns_parameters() -> None:
    extended = [name for name, value in vars(BoundedProtocol).items()
                if callable(value) and hasattr(HttpToolsProtocol, name) and not name.startswith("__")]
    assert {"connection_made", "connection_lost", "data_received", "send_400_response", "shutdown",
            "on_message_begin", "on_headers_complete", "on_body", "on_message_complete",
            "on_response_complete"} <= set(extended)
    for name in extended:
        assert parameters(getattr(BoundedProtocol, name)) == parameters(getattr(HttpToolsProtocol, name)), name
    assert parameters(HttpToolsProtocol.__init__) == parameters(BoundedProtocol.__init__)


async def test_the_protocol_state_the_bridge_reads_is_there() -> None:
    config = bridge_config(lifespan="off")
    protocol = HttpToolsProtocol(config, ServerState(), {}, asyncio.get_running_loop())
    for attribute in ("transport", "flow", "pipeline", "cycle", "server_state", "loop", "client",
                      "timeout_keep_alive_task"):
        assert hasattr(protocol, attribute), attribute
    assert isinstance(protocol.server_state.total_requests, int)
    # uvicorn's response handler arms its keep-alive timer only when no pipelined request waits
    assert {"pipeline", "timeout_keep_alive_task", "is_closing"} <= names(HttpToolsProtocol.on_response_complete)


def test_the_request_cycle_fields_the_bridge_reads_and_sets() -> None:
    cycle = parameters(RequestResponseCycle.__init__)
    assert ("message_event", inspect.Parameter.POSITIONAL_OR_KEYWORD) in cycle
    assert ("on_response", inspect.Parameter.POSITIONAL_OR_KEYWORD) in cycle
    setup = names(RequestResponseCycle.__init__)
    assert {"disconnected", "response_started", "response_complete", "message_event"} <= setup
    assert "disconnected" in names(RequestResponseCycle.receive), "the application no longer reads disconnected"


# -- httptools: the parser calls the protocol's handlers by name ---------------------------------------

def test_the_parser_calls_the_handlers_the_protocol_extends() -> None:
    calls: list[str] = []

    class Recorder:
        def __getattr__(self, name: str) -> Callable[..., None]:
            if not name.startswith("on_"):
                raise AttributeError(name)
            return lambda *args: calls.append(name)

    parser = httptools.HttpRequestParser(Recorder())
    parser.feed_data(b"POST /push HTTP/1.1\r\nhost: b\r\ncontent-length: 2\r\n\r\n{}")
    assert [c for c in calls if c not in ("on_url", "on_header")] == [
        "on_message_begin", "on_headers_complete", "on_body", "on_message_complete"]


# -- uvicorn: the server and its settings (bridge/listener.py, bridge/tls.py) -----------------------

def test_the_server_methods_the_listener_replaces_or_extends() -> None:
    for name in ("startup", "shutdown", "serve"):
        assert parameters(getattr(Server, name)) == parameters(getattr(uvicorn.Server, name)), name
        assert inspect.iscoroutinefunction(getattr(uvicorn.Server, name)), name
    assert parameters(uvicorn.Server.handle_exit) == [("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
                                                     ("sig", inspect.Parameter.POSITIONAL_OR_KEYWORD),
                                                     ("frame", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    assert "capture_signals" in names(uvicorn.Server.serve) | names(uvicorn.Server._serve)
    assert "servers" in names(uvicorn.Server.shutdown), "uvicorn no longer closes what startup opened"
    assert "started" in names(uvicorn.Server._serve), "uvicorn no longer reads whether startup succeeded"
    assert isinstance(STARTUP_FAILURE, int)


def test_the_server_state_and_lifespan_the_listener_uses() -> None:
    config = bridge_config(lifespan="on")
    server = uvicorn.Server(config)
    assert {"server_state", "started", "should_exit"} <= set(vars(server))
    config.load()
    lifespan = config.lifespan_class(config)
    assert inspect.iscoroutinefunction(lifespan.startup) and inspect.iscoroutinefunction(lifespan.shutdown)
    assert lifespan.should_exit is False and lifespan.state == {}
    assert "lifespan" in names(uvicorn.Server._serve)


def test_the_certificate_is_what_uvicorn_calls_for_a_context(tmp_path: Path) -> None:
    assert "ssl_context_factory" in inspect.signature(uvicorn.Config).parameters
    certificate = Certificate(tmp_path / "tls.crt", tmp_path / "tls.key")
    config = bridge_config(lifespan="off", ssl_context_factory=certificate.context_factory)
    with pytest.raises(RuntimeError, match="certificate was not loaded"):  # uvicorn asked the factory
        config.load()
    assert "ssl" in names(uvicorn.Config.load), "the factory's context is no longer kept as config.ssl"
    assert {"backlog", "host", "port"} <= set(vars(config))


def test_the_handshake_is_driven_as_asyncio_drives_a_coroutine() -> None:
    """TlsHandshake steps start_tls's coroutine itself and clears the flag a task clears on each
    future the coroutine waits for."""
    future: asyncio.Future[None] = asyncio.new_event_loop().create_future()
    assert future._asyncio_future_blocking is False
    future.get_loop().close()


# -- aiokafka: the producer's parts the write paths and the supervisor use ---------------------------

async def test_the_producer_parts_the_write_paths_use() -> None:
    producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1")  # made, never started: no connection
    assert isinstance(producer.client, AIOKafkaClient) and isinstance(producer.client.cluster, ClusterMetadata)
    assert {"key", "partition", "headers"} <= set(inspect.signature(producer.send).parameters)
    assert ("partition", inspect.Parameter.KEYWORD_ONLY) in parameters(producer.send_batch)
    assert isinstance(producer.create_batch(), BatchBuilder)
    assert [(n, k) for n, k in parameters(BatchBuilder.append) if n != "self"] == [
        (n, inspect.Parameter.KEYWORD_ONLY) for n in ("timestamp", "key", "value", "headers")]
    for name in ("partitions_for", "begin_transaction", "commit_transaction"):
        assert inspect.iscoroutinefunction(getattr(producer, name)), name
    cluster = producer.client.cluster
    assert cluster.partitions_for_topic("unknown") is None and list(cluster.brokers()) == []
    assert "nodeId" in BrokerMetadata._fields  # what the supervisor compares with the live brokers


async def test_the_accumulator_parts_a_push_is_appended_with() -> None:
    """bridge/kafka/appends.py: the open batches per partition, how a new one is started, what
    `add_message` checks before appending, and a queued batch's builder and future."""
    producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1")
    accumulator = producer._message_accumulator
    assert isinstance(accumulator, MessageAccumulator)
    assert accumulator._closed is False and accumulator._exception is None
    assert {"_closed", "_exception", "_batches", "create_builder", "_append_batch"} <= names(
        MessageAccumulator.add_message), "add_message no longer works the way append_push copies"
    tp = TopicPartition("t", 0)
    batch = accumulator._append_batch(accumulator.create_builder(), tp)
    assert isinstance(batch, MessageBatch) and accumulator._batches[tp][-1] is batch
    assert isinstance(batch._builder, BatchBuilder) and isinstance(batch.future, asyncio.Future)
    assert "future" in names(MessageBatch.done) and "future" in names(MessageBatch.failure)


def test_the_admin_side_health_and_diagnosis_use() -> None:
    assert "request_timeout_ms" in inspect.signature(AIOKafkaClient).parameters
    for name in ("bootstrap", "fetch_all_metadata", "close"):
        assert inspect.iscoroutinefunction(getattr(AIOKafkaClient, name)), name
    assert callable(ClusterMetadata.topics) and callable(ClusterMetadata.brokers)
    options = inspect.signature(create_conn).parameters
    assert {"host", "port", "client_id", "ssl_context", "security_protocol", "sasl_mechanism",
            "sasl_plain_username", "sasl_plain_password"} <= set(options)
    responses = [c for n, c in vars(admin_protocol).items() if n.startswith("CreateTopicsResponse_v")]
    assert responses
    for response in responses:
        errors = response.SCHEMA.fields[response.SCHEMA.names.index("topic_errors")]
        assert errors.array_of.names[:2] == ("topic", "error_code"), response.__name__
