"""Every setting of the bridge, declared once: the fields of `Settings`.

A field is a setting. Its name gives the variable (BRIDGE_ and the name in capitals); its annotation
gives how the text is read (int, float, bool, str, Path: an existing file, a Literal: one of its
values, case ignored; `| None`: unset means None); `setting()` gives the default, the accepted range,
a parser for anything the type alone does not say, and the line docs/configuration.md shows.
bridge.config reads the environment by these declarations and then applies the rules that tie
settings together.

Adding a setting: one field here; then `python -m bridge.configdoc --update docs/configuration.md`
(a test fails until the page matches); and, only if it depends on other settings, one rule in
bridge.config.
"""
from __future__ import annotations

import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

PREFIX = "BRIDGE_"
TOKEN_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,50}")
TOPIC_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,249}")

KafkaProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
LogLevel = Literal["debug", "info", "warning", "error"]
MalformedPushes = Literal["quarantine", "refuse"]

T = TypeVar("T")


class ConfigError(ValueError):
    """A setting is missing or invalid; the message starts with the variable's name."""


@dataclass(frozen=True)
class Route:
    """Events whose eventType matches `pattern` (a shell-style glob) go to `topic`."""

    pattern: str
    topic: str


@dataclass(frozen=True)
class Declaration:
    """What a setting's annotation and default do not say. In `doc`, `{choices}` stands for the
    values of a Literal setting; in `shown`, `{default}` for the default as the table writes it."""

    doc: str
    within: tuple[float, float] | None = None  # numbers: lowest and highest accepted, both included
    parse: Callable[[str, str], Any] | None = None  # (variable, text) -> value; raises ConfigError
    shown: str | None = None  # the default column, where the value alone would mislead
    secret: bool = False  # taken exactly as given (no stripping), never in repr or a message


def setting(default: T, doc: str, *, within: tuple[float, float] | None = None,
            parse: Callable[[str, str], Any] | None = None, shown: str | None = None, secret: bool = False) -> T:
    """A setting with a default (see Declaration for the rest)."""
    declaration = Declaration(doc, within, parse, shown, secret)
    return field(default=default, repr=not secret, metadata={"setting": declaration})


def required(doc: str, *, parse: Callable[[str, str], Any] | None = None) -> Any:
    """A setting without a default: the bridge does not start without it ("is not set: <doc>")."""
    return field(metadata={"setting": Declaration(doc, parse=parse)})


# Parsers for values whose type alone does not say what is valid. `name` is the variable's name.

def kafka_topic(name: str, value: str) -> str:
    if not TOPIC_PATTERN.fullmatch(value) or value in (".", ".."):
        raise ConfigError(f"{name}: {value!r} is not a valid Kafka topic name")
    return value


def topic_or_off(name: str, value: str) -> str | None:
    return None if value.lower() == "off" else kafka_topic(name, value)


def directory_or_off(name: str, value: str) -> Path | None:
    return None if value.lower() == "off" else Path(value)


def url_path(name: str, value: str) -> str:
    if not value.startswith("/"):
        raise ConfigError(f"{name}={value!r} must start with '/'")
    return value


def route_list(name: str, value: str) -> tuple[Route, ...]:
    found = []
    for item in value.split(","):
        pattern, sep, target = item.strip().partition("=")
        if not sep or not pattern.strip():
            raise ConfigError(f"{name}: {item.strip()!r} is not PATTERN=TOPIC")
        found.append(Route(pattern.strip(), kafka_topic(name, target.strip())))
    return tuple(found)


def header_name(name: str, value: str) -> str:
    """An HTTP header name, lower case (as the server hands headers to the application)."""
    if not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", value):
        raise ConfigError(f"{name}={value!r} is not an HTTP header name")
    return value.lower()


def token_list(name: str, value: str) -> tuple[str, ...]:
    found = tuple(t.strip() for t in value.split(",") if t.strip())
    for token in found:
        if not TOKEN_PATTERN.fullmatch(token):
            # Never echo the token itself: it is a secret.
            raise ConfigError(f"{name}: a token of {len(token)} characters is not 1-50 of A-Z, a-z, 0-9, '-' "
                              "or '_' (the gateway refuses other tokens)")
    return found


# With a spool the wait for Kafka is short: a push Kafka is slow to take is spooled and answered at once.
SPOOLED_PUBLISH_TIMEOUT_S = 2.0
REQUIRED_WITH_SASL = "(required with `SASL_*`)"
REQUIRED_FOR_HTTPS = "(required for HTTPS)"


@dataclass(frozen=True)
class Settings:
    """The validated settings, in the order of docs/configuration.md's table."""

    # Kafka: where it is and how to log in
    kafka_bootstrap_servers: str = required("`host:port[,host:port...]` of the Kafka brokers")
    kafka_security_protocol: KafkaProtocol = setting("PLAINTEXT", "how the bridge talks to Kafka: {choices}")
    kafka_ssl_cafile: Path | None = setting(
        None, "PEM file of the CA that signed the brokers' certificates", shown="system CAs")
    kafka_ssl_certfile: Path | None = setting(
        None, "client certificate, PEM, for brokers that require mutual TLS; goes with `BRIDGE_KAFKA_SSL_KEYFILE`")
    kafka_ssl_keyfile: Path | None = setting(
        None, "the client certificate's private key, PEM. The three files are read again when they change, for the "
        "Kafka clients made after that (docs/kafka.md)")
    kafka_sasl_mechanism: SaslMechanism | None = setting(
        None, "how the bridge logs in: {choices}", shown=REQUIRED_WITH_SASL)
    kafka_sasl_username: str | None = setting(None, "the SASL user", shown=REQUIRED_WITH_SASL)
    kafka_sasl_password: str | None = setting(
        None, "its password; give this or the next one, not both", secret=True)
    kafka_sasl_password_file: Path | None = setting(
        None, "a file holding the password (e.g. a mounted Kubernetes Secret); a trailing line end is dropped; read "
        "again when it changes, for the Kafka clients made after that (docs/kafka.md)")
    kafka_linger_ms: int = setting(
        0, "how long the producer waits to fill a batch (0: batches still form while a request is in flight; in "
        "atomic mode also how long pushes gather into one transaction)", within=(0, 1000))

    # The push endpoint and the management endpoint
    host: str = setting("127.0.0.1", "listen address (`0.0.0.0` in containers)")
    port: int = setting(8043, "listen port (the gateway's own HTTPS port convention)", within=(1, 65535))
    management_host: str = setting("127.0.0.1", "listen address of the management port", shown="`BRIDGE_HOST`")
    management_port: int = setting(
        8081, "`/healthz`, `/readyz`, `/metrics` (plain HTTP); must differ from `BRIDGE_PORT`", within=(1, 65535))
    push_path: str = setting("/service-cloud/rest/cc-ai/v1/agentevent/pushresult", "the callback path",
                             parse=url_path)
    tls_certfile: Path | None = setting(
        None, "server certificate chain, PEM; TLS 1.2 is the minimum, TLS 1.3 preferred. Read again within seconds of "
        "a change (with the key): new connections get the new certificate", shown=REQUIRED_FOR_HTTPS)
    tls_keyfile: Path | None = setting(None, "the server certificate's private key, PEM", shown=REQUIRED_FOR_HTTPS)
    insecure_http: bool = setting(False, "`true` serves plain HTTP, for deployments that terminate TLS in front")
    service_tokens: tuple[str, ...] = setting(
        (), "comma-separated accepted `service_token` values, read at start only; give this or the next one, not "
        "both", parse=token_list, shown="(this or the next one)")
    service_tokens_file: Path | None = setting(
        None, "a file of accepted `service_token` values, one per line (blank lines and `#` comments skipped), e.g. "
        "a mounted Secret; read again within seconds of a change, without a restart (see docs/deployment.md, "
        "rotating secrets)", shown="(this or the previous one)")
    allow_no_token: bool = setting(False, "`true` with no tokens configured accepts pushes without a token "
                                   "(logged as a security warning at start)")

    # Several replicas behind the agent-affine router (docs/deployment.md)
    replica_name: str | None = setting(
        None, "this replica's name (the pod or container name), in every record's `bridge_replica` header",
        shown="the host name")
    router_key_header: str | None = setting(
        None, "the request header in which the agent-affine router passes the key it hashed on (the shipped "
        "routers send `x-cc-route-key`); when set, pushes without it or with another agent's key are counted in "
        "`bridge_affinity_misses_total`. Set it only where the push port is reachable through the router alone",
        parse=header_name)
    leave_grace_s: float = setting(
        5.0, "on SIGTERM, how long the replica keeps serving pushes after `/readyz` turned 404 (the shipped routers "
        "stop sending it new pushes at their next health check), before its push port closes; longer than the "
        "routers' check interval", within=(0.0, 300.0))
    leave_spool_wait_s: float = setting(
        0.0, "for a spool volume of the replica's own (Kubernetes): on SIGTERM with pushes in the spool, how long "
        "the replica serves on as usual while they are delivered before it tells the router; if they are not "
        "delivered by then, it closes without telling it, so the router keeps its agents for it until it is back "
        "with the same volume (their newer pushes never overtake the spooled ones). `0`: tell the router at once "
        "(a shared volume, where the other replicas keep the order)", within=(0.0, 3600.0))
    router_probe_loss_s: float = setting(
        10.0, "once health checks naming a router (header `x-cc-router`) have come, a replica that gets none for this "
        "long takes no pushes (the router cannot reach it, or took it out) until they come again; `0` disables",
        within=(0.0, 3600.0))
    join_window_s: float = setting(
        15.0, "replicas sharing one spool volume: how long after this replica starts taking pushes (at start, or "
        "when ready again) the router may still be moving agents to it; meanwhile its spooled pushes wait for "
        "what the other replicas spooled before them ([delivery.md](delivery.md#several-replicas))",
        within=(1.0, 3600.0))

    # Where events go
    topic: str = setting("cc.agent.events", "default topic", parse=kafka_topic)
    routes: tuple[Route, ...] = setting(
        (), "`GLOB=TOPIC,...`, first match wins, e.g. `AgentChat_*=cc.agent.chat,AgentMediaEvent_*=cc.agent.media`",
        parse=route_list)
    dead_letter_topic: str | None = setting(
        "cc.agent.deadletter", "where malformed pushes of authenticated senders are kept; `off` disables (and with "
        "it quarantine)", parse=topic_or_off)
    malformed_pushes: MalformedPushes = setting(
        "quarantine", "`quarantine`: a malformed push from an authenticated sender is kept in the dead-letter topic "
        "and answered `\"0\"`; `refuse`: answered 400/413/415 (and still kept), for integration testing",
        shown="{default} (`refuse` when the dead-letter topic is `off`)")
    spool_dir: Path | None = setting(
        None, "directory of the outage spool (the process claims a free `slot-N` under it); unset or `off`: no "
        "spool, pushes get 503 while Kafka cannot take them", parse=directory_or_off)
    spool_append_timeout_s: float = setting(
        3.0, "longest wait for the spool's disk before a push that needs it is refused with 503; a write that fails "
        "or takes longer makes the replica refuse such pushes until a probe write succeeds", within=(0.1, 60.0))
    spool_max_bytes: int = setting(1 << 30, "size limit of the spool on disk; past it pushes that need the spool "
                                   "get 503", within=(1 << 20, 1 << 50))
    atomic_pushes: bool = setting(
        False, "write each push inside a Kafka transaction (see [delivery.md](delivery.md#atomic-pushes))")
    transactional_id: str | None = setting(
        None, "transactional id in atomic mode; unique per process", shown="`cc-bridge-<hostname>-<port>`")
    create_topics: bool = setting(False, "create missing topics (including the dead-letter topic) at start")
    topic_partitions: int = setting(12, "partitions of topics the bridge creates", within=(1, 10_000))
    topic_replication_factor: int = setting(
        1, "replication factor of topics the bridge creates (use 3 on a real cluster)", within=(1, 32))

    # Bounds
    max_body_bytes: int = setting(1_048_576, "largest accepted request body", within=(1024, 64 * 1_048_576))
    max_header_bytes: int = setting(16_384, "largest accepted request line plus headers", within=(1024, 1_048_576))
    max_events_per_push: int = setting(1000, "most events accepted in one push", within=(1, 100_000))
    max_inflight_pushes: int = setting(
        1000, "pushes being kept at once by one process (received whole, waiting for Kafka or the spool); more are "
        "refused with 503. Bodies still arriving do not count: the connection bound and deadlines hold those",
        within=(1, 1_000_000))
    publish_timeout_s: float = setting(
        5.0, "longest wait for Kafka's acknowledgement before the push is spooled (or, with no spool, answered 503)",
        within=(0.1, 60.0), shown=f"{{default}}; `{SPOOLED_PUBLISH_TIMEOUT_S:g}` with a spool")
    shutdown_timeout_s: float = setting(
        20.0, "on SIGTERM, how long in-flight pushes may take to finish", within=(0.0, 600.0))
    exit_drain_timeout_s: float = setting(
        60.0, "on SIGTERM, once in-flight pushes finished: how long the bridge keeps delivering its spool while "
        "Kafka is usable before it exits (what is left stays on its volume)", within=(0.0, 3600.0))

    # Connections: deadlines and bounds (docs/push-endpoint.md#slow-and-idle-connections)
    max_connections: int = setting(
        4096, "open connections of the push port, counted from accept; above it a new connection closes an idle "
        "one or the slowest unfinished head or handshake, never one whose request has arrived; if none, it is "
        "refused", within=(16, 1_000_000))
    management_max_connections: int = setting(64, "open connections of the management port", within=(4, 100_000))
    tls_handshake_timeout_s: float = setting(
        5.0, "longest TLS handshake (and TLS close) of the push port", within=(0.5, 60.0))
    head_timeout_s: float = setting(
        10.0, "longest time for a request head to arrive, from its first byte (on a new connection, from the "
        "connection's start); past it the answer is 408 and the connection is closed", within=(0.5, 300.0))
    body_timeout_s: float = setting(
        10.0, "longest time for a request body to arrive after its head, plus 1 s per "
        "`BRIDGE_BODY_MIN_BYTES_PER_S` bytes received; past it the answer is 408 and the connection is closed",
        within=(0.5, 300.0))
    body_min_bytes_per_s: int = setting(
        8192, "the slowest body that gets more time than `BRIDGE_BODY_TIMEOUT_S`, in bytes per second",
        within=(1, 1 << 30))
    keepalive_timeout_s: float = setting(
        65.0, "how long a kept-alive connection may stay idle between requests", within=(1.0, 3600.0))

    # Logs
    log_level: LogLevel = setting("info", "level of the log: {choices}")
    push_log_level: LogLevel = setting(
        "info", "level of the line logged per accepted push, one of {choices} (set `debug` to silence them)")

    @property
    def topics(self) -> tuple[str, ...]:
        """Every topic the bridge may write to, default first."""
        extra = [self.dead_letter_topic] if self.dead_letter_topic else []
        return tuple(dict.fromkeys([self.topic, *(r.topic for r in self.routes), *extra]))


def optional_of(hint: Any) -> Any:
    """X of `X | None`; any other type as it is."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next(arg for arg in typing.get_args(hint) if arg is not type(None))
    return hint


def choices_of(hint: Any) -> tuple[str, ...]:
    """The values of a Literal type; () for any other type."""
    return tuple(typing.get_args(hint)) if typing.get_origin(hint) is Literal else ()
