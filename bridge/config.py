"""Every setting of the bridge, read from BRIDGE_* environment variables and validated once.

A bad value raises ConfigError naming the variable; `python -m bridge serve` prints it and exits
before opening any port. The rest of the code receives a frozen Settings and never reads the
environment itself.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "BRIDGE_"
DEFAULT_PUSH_PATH = "/service-cloud/rest/cc-ai/v1/agentevent/pushresult"
TOKEN_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,50}")
TOPIC_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,249}")
KAFKA_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
LOG_LEVELS = ("debug", "info", "warning", "error")
MALFORMED_MODES = ("quarantine", "refuse")


class ConfigError(ValueError):
    """A setting is missing or invalid; the message starts with the variable's name."""


@dataclass(frozen=True)
class Route:
    """Events whose eventType matches `pattern` (a shell-style glob) go to `topic`."""

    pattern: str
    topic: str


@dataclass(frozen=True)
class Settings:
    kafka_bootstrap_servers: str
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: str | None = field(default=None, repr=False)
    kafka_sasl_password_file: Path | None = None
    kafka_linger_ms: int = 0
    host: str = "127.0.0.1"
    port: int = 8043
    management_host: str = "127.0.0.1"
    management_port: int = 8081
    push_path: str = DEFAULT_PUSH_PATH
    tls_certfile: Path | None = None
    tls_keyfile: Path | None = None
    insecure_http: bool = False
    service_tokens: tuple[str, ...] = ()
    allow_no_token: bool = False
    topic: str = "cc.agent.events"
    routes: tuple[Route, ...] = ()
    dead_letter_topic: str | None = "cc.agent.deadletter"
    malformed_pushes: str = "quarantine"
    spool_dir: Path | None = None
    spool_max_bytes: int = 1 << 30
    atomic_pushes: bool = False
    transactional_id: str | None = None
    create_topics: bool = False
    topic_partitions: int = 12
    topic_replication_factor: int = 1
    max_body_bytes: int = 1_048_576
    max_header_bytes: int = 16_384
    max_events_per_push: int = 1000
    max_inflight_pushes: int = 1000
    publish_timeout_s: float = 5.0
    shutdown_timeout_s: float = 20.0
    log_level: str = "info"
    push_log_level: str = "info"

    @property
    def topics(self) -> tuple[str, ...]:
        """Every topic the bridge may write to, default first."""
        extra = [self.dead_letter_topic] if self.dead_letter_topic else []
        return tuple(dict.fromkeys([self.topic, *(r.topic for r in self.routes), *extra]))


@dataclass
class _Reader:
    """Reads and converts BRIDGE_* variables, remembering the first problem per name."""

    env: Mapping[str, str]
    seen: set[str] = field(default_factory=set)

    def raw(self, name: str) -> str | None:
        self.seen.add(name)
        value = self.env.get(PREFIX + name)
        return value.strip() if value is not None and value.strip() != "" else None

    def text(self, name: str, default: str | None = None) -> str | None:
        value = self.raw(name)
        return default if value is None else value

    def required(self, name: str, hint: str) -> str:
        value = self.raw(name)
        if value is None:
            raise ConfigError(f"{PREFIX}{name} is not set: {hint}")
        return value

    def number(self, name: str, default: float, low: float, high: float, kind: type = int) -> float:
        value = self.raw(name)
        if value is None:
            return default
        try:
            number = kind(value)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise ConfigError(f"{PREFIX}{name}={value!r} is not {what}") from None
        if not low <= number <= high:
            raise ConfigError(f"{PREFIX}{name}={number} is outside {low}..{high}")
        return number

    def flag(self, name: str, default: bool = False) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        lowered = value.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{PREFIX}{name}={value!r} is not a boolean (use true or false)")

    def file(self, name: str) -> Path | None:
        value = self.raw(name)
        if value is None:
            return None
        path = Path(value)
        if not path.is_file():
            raise ConfigError(f"{PREFIX}{name}={value!r}: no such file")
        return path

    def secret(self, name: str) -> str | None:
        """Taken exactly as given (spaces are part of a password); empty means unset."""
        self.seen.add(name)
        return self.env.get(PREFIX + name) or None

    def choice(self, name: str, default: str, choices: tuple[str, ...], fold=str.upper) -> str:
        value = fold(self.raw(name) or default)
        if value not in choices:
            raise ConfigError(f"{PREFIX}{name}={value!r} must be one of {', '.join(choices)}")
        return value


def _topic(name: str, value: str) -> str:
    if not TOPIC_PATTERN.fullmatch(value) or value in (".", ".."):
        raise ConfigError(f"{PREFIX}{name}: {value!r} is not a valid Kafka topic name")
    return value


def _dead_letter_topic(value: str) -> str | None:
    return None if value.lower() == "off" else _topic("DEAD_LETTER_TOPIC", value)


def _routes(value: str | None) -> tuple[Route, ...]:
    if value is None:
        return ()
    routes = []
    for item in value.split(","):
        pattern, sep, topic = item.strip().partition("=")
        if not sep or not pattern.strip():
            raise ConfigError(f"{PREFIX}ROUTES: {item.strip()!r} is not PATTERN=TOPIC")
        routes.append(Route(pattern.strip(), _topic("ROUTES", topic.strip())))
    return tuple(routes)


def _tokens(value: str | None) -> tuple[str, ...]:
    if value is None:
        return ()
    tokens = tuple(t.strip() for t in value.split(",") if t.strip())
    for token in tokens:
        if not TOKEN_PATTERN.fullmatch(token):
            # Never echo the token itself: it is a secret.
            raise ConfigError(
                f"{PREFIX}SERVICE_TOKENS: a token of {len(token)} characters is not 1-50 of "
                "A-Z, a-z, 0-9, '-' or '_' (the gateway refuses other tokens)"
            )
    return tokens


def _sasl(r: _Reader, protocol: str) -> dict:
    """The SASL settings, checked together; the password (from the variable or the file) is never
    part of an error message."""
    mechanism, username = r.raw("KAFKA_SASL_MECHANISM"), r.raw("KAFKA_SASL_USERNAME")
    password, password_file = r.secret("KAFKA_SASL_PASSWORD"), r.file("KAFKA_SASL_PASSWORD_FILE")
    given = {"KAFKA_SASL_MECHANISM": mechanism, "KAFKA_SASL_USERNAME": username,
             "KAFKA_SASL_PASSWORD": password, "KAFKA_SASL_PASSWORD_FILE": password_file}
    if not protocol.startswith("SASL_"):
        name = next((n for n, v in given.items() if v is not None), None)
        if name is not None:
            raise ConfigError(f"{PREFIX}{name} is set but {PREFIX}KAFKA_SECURITY_PROTOCOL={protocol} does not "
                              "use SASL (use SASL_SSL or SASL_PLAINTEXT)")
        return {}
    if mechanism is None:
        raise ConfigError(f"{PREFIX}KAFKA_SASL_MECHANISM is not set: {protocol} needs one of "
                          f"{', '.join(SASL_MECHANISMS)}")
    if mechanism.upper() not in SASL_MECHANISMS:
        raise ConfigError(f"{PREFIX}KAFKA_SASL_MECHANISM={mechanism!r} must be one of {', '.join(SASL_MECHANISMS)}")
    if username is None:
        raise ConfigError(f"{PREFIX}KAFKA_SASL_USERNAME is not set: {protocol} needs a user name")
    if password is not None and password_file is not None:
        raise ConfigError(f"{PREFIX}KAFKA_SASL_PASSWORD_FILE and {PREFIX}KAFKA_SASL_PASSWORD are both set: "
                          "give the password one way only")
    if password_file is not None:
        try:
            password = password_file.read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{PREFIX}KAFKA_SASL_PASSWORD_FILE={str(password_file)!r} cannot be read "
                              f"({type(exc).__name__})") from None
        if not password:
            raise ConfigError(f"{PREFIX}KAFKA_SASL_PASSWORD_FILE={str(password_file)!r} is empty")
    elif password is None:
        raise ConfigError(f"{PREFIX}KAFKA_SASL_PASSWORD is not set: {protocol} needs a password "
                          f"(or {PREFIX}KAFKA_SASL_PASSWORD_FILE, a file holding it)")
    return {"kafka_sasl_mechanism": mechanism.upper(), "kafka_sasl_username": username,
            "kafka_sasl_password": password, "kafka_sasl_password_file": password_file}


def load(env: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from the environment; raise ConfigError on the first invalid variable."""
    r = _Reader(os.environ if env is None else env)
    insecure_http = r.flag("INSECURE_HTTP")
    tls_certfile, tls_keyfile = r.file("TLS_CERTFILE"), r.file("TLS_KEYFILE")
    if not insecure_http and (tls_certfile is None or tls_keyfile is None):
        missing = "TLS_CERTFILE" if tls_certfile is None else "TLS_KEYFILE"
        raise ConfigError(
            f"{PREFIX}{missing} is not set: HTTPS needs a certificate and key "
            f"(or set {PREFIX}INSECURE_HTTP=true when TLS is terminated in front of the bridge)"
        )
    tokens = _tokens(r.raw("SERVICE_TOKENS"))
    allow_no_token = r.flag("ALLOW_NO_TOKEN")
    if not tokens and not allow_no_token:
        raise ConfigError(
            f"{PREFIX}SERVICE_TOKENS is not set: list the service_token values the gateway sends "
            f"(comma-separated), or set {PREFIX}ALLOW_NO_TOKEN=true to accept pushes without one"
        )
    push_path = r.text("PUSH_PATH", DEFAULT_PUSH_PATH)
    if not push_path.startswith("/"):
        raise ConfigError(f"{PREFIX}PUSH_PATH={push_path!r} must start with '/'")
    protocol = r.choice("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT", KAFKA_PROTOCOLS)
    certfile, keyfile = r.file("KAFKA_SSL_CERTFILE"), r.file("KAFKA_SSL_KEYFILE")
    if (certfile is None) != (keyfile is None):
        raise ConfigError(f"{PREFIX}KAFKA_SSL_CERTFILE and {PREFIX}KAFKA_SSL_KEYFILE go together")
    host = r.text("HOST", "127.0.0.1")
    port = r.number("PORT", 8043, 1, 65535)
    management_port = r.number("MANAGEMENT_PORT", 8081, 1, 65535)
    dead_letter_topic = _dead_letter_topic(r.text("DEAD_LETTER_TOPIC", "cc.agent.deadletter"))
    malformed = r.choice("MALFORMED_PUSHES", "quarantine" if dead_letter_topic else "refuse", MALFORMED_MODES,
                         fold=str.lower)
    if malformed == "quarantine" and not dead_letter_topic:
        raise ConfigError(f"{PREFIX}MALFORMED_PUSHES=quarantine needs a dead-letter topic "
                          f"({PREFIX}DEAD_LETTER_TOPIC is off)")
    spool_dir = r.raw("SPOOL_DIR")
    spool_dir = None if spool_dir is None or spool_dir.lower() == "off" else Path(spool_dir)
    if management_port == port:
        raise ConfigError(f"{PREFIX}MANAGEMENT_PORT={management_port} must differ from {PREFIX}PORT")
    settings = Settings(
        kafka_bootstrap_servers=r.required(
            "KAFKA_BOOTSTRAP_SERVERS", "comma-separated host:port list of the Kafka brokers"
        ),
        kafka_security_protocol=protocol,
        kafka_ssl_cafile=r.file("KAFKA_SSL_CAFILE"),
        kafka_ssl_certfile=certfile,
        kafka_ssl_keyfile=keyfile,
        **_sasl(r, protocol),
        kafka_linger_ms=r.number("KAFKA_LINGER_MS", 0, 0, 1000),
        host=host,
        port=port,
        management_host=r.text("MANAGEMENT_HOST", host),
        management_port=management_port,
        push_path=push_path,
        tls_certfile=tls_certfile,
        tls_keyfile=tls_keyfile,
        insecure_http=insecure_http,
        service_tokens=tokens,
        allow_no_token=allow_no_token,
        topic=_topic("TOPIC", r.text("TOPIC", "cc.agent.events")),
        routes=_routes(r.raw("ROUTES")),
        dead_letter_topic=dead_letter_topic,
        malformed_pushes=malformed,
        spool_dir=spool_dir,
        spool_max_bytes=r.number("SPOOL_MAX_BYTES", 1 << 30, 1 << 20, 1 << 50),
        atomic_pushes=r.flag("ATOMIC_PUSHES"),
        transactional_id=r.raw("TRANSACTIONAL_ID"),
        create_topics=r.flag("CREATE_TOPICS"),
        topic_partitions=r.number("TOPIC_PARTITIONS", 12, 1, 10_000),
        topic_replication_factor=r.number("TOPIC_REPLICATION_FACTOR", 1, 1, 32),
        max_body_bytes=r.number("MAX_BODY_BYTES", 1_048_576, 1024, 64 * 1_048_576),
        max_header_bytes=r.number("MAX_HEADER_BYTES", 16_384, 1024, 1_048_576),
        max_events_per_push=r.number("MAX_EVENTS_PER_PUSH", 1000, 1, 100_000),
        max_inflight_pushes=r.number("MAX_INFLIGHT_PUSHES", 1000, 1, 1_000_000),
        # With a spool the wait is short: a push Kafka is slow to take is spooled and answered at once.
        publish_timeout_s=r.number("PUBLISH_TIMEOUT_S", 5.0 if spool_dir is None else 2.0, 0.1, 60.0,
                                   float),
        shutdown_timeout_s=r.number("SHUTDOWN_TIMEOUT_S", 20.0, 0.0, 600.0, float),
        log_level=r.choice("LOG_LEVEL", "info", LOG_LEVELS, fold=str.lower),
        push_log_level=r.choice("PUSH_LOG_LEVEL", "info", LOG_LEVELS, fold=str.lower),
    )
    unknown = sorted(k for k in r.env if k.startswith(PREFIX) and k[len(PREFIX):] not in r.seen)
    if unknown:
        raise ConfigError(f"{unknown[0]} is not a setting of the bridge (a typo?)")
    return settings
