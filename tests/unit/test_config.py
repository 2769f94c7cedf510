from pathlib import Path

import pytest

from bridge import config
from bridge.config import ConfigError, Route

BASE = {"BRIDGE_KAFKA_BOOTSTRAP_SERVERS": "k1:9092,k2:9092", "BRIDGE_INSECURE_HTTP": "true",
        "BRIDGE_SERVICE_TOKENS": "alpha,beta_2"}


def test_defaults():
    settings = config.load(BASE)
    assert settings.port == 8043
    assert settings.push_path == "/service-cloud/rest/cc-ai/v1/agentevent/pushresult"
    assert settings.service_tokens == ("alpha", "beta_2")
    assert settings.topics == ("cc.agent.events", "cc.agent.deadletter")
    assert settings.publish_timeout_s == 5.0
    assert settings.atomic_pushes is False
    assert settings.spool_dir is None and settings.malformed_pushes == "quarantine"


def test_spool_and_malformed_pushes():
    settings = config.load({**BASE, "BRIDGE_SPOOL_DIR": "/var/lib/cc-bridge/spool", "BRIDGE_SPOOL_MAX_BYTES": "5000000"})
    assert settings.spool_dir == Path("/var/lib/cc-bridge/spool") and settings.spool_max_bytes == 5_000_000
    assert settings.publish_timeout_s == 2.0, "with a spool a slow Kafka costs the gateway 2 s, not 5"
    assert config.load({**BASE, "BRIDGE_SPOOL_DIR": "OFF"}).spool_dir is None
    assert config.load({**BASE, "BRIDGE_SPOOL_DIR": "/s", "BRIDGE_PUBLISH_TIMEOUT_S": "4"}).publish_timeout_s == 4.0
    assert config.load({**BASE, "BRIDGE_MALFORMED_PUSHES": "Refuse"}).malformed_pushes == "refuse"
    assert config.load({**BASE, "BRIDGE_DEAD_LETTER_TOPIC": "off"}).malformed_pushes == "refuse"


def test_routes_and_topics():
    settings = config.load({**BASE, "BRIDGE_ROUTES": "AgentChat_*=chat, AgentMedia*=media,QC_*=chat",
                            "BRIDGE_DEAD_LETTER_TOPIC": "off"})
    assert settings.routes == (Route("AgentChat_*", "chat"), Route("AgentMedia*", "media"), Route("QC_*", "chat"))
    assert settings.topics == ("cc.agent.events", "chat", "media")
    assert config.load({**BASE, "BRIDGE_DEAD_LETTER_TOPIC": "dlq"}).topics == ("cc.agent.events", "dlq")


@pytest.mark.parametrize("env, names", [
    ({"BRIDGE_KAFKA_BOOTSTRAP_SERVERS": None}, "BRIDGE_KAFKA_BOOTSTRAP_SERVERS"),
    ({"BRIDGE_PORT": "80x"}, "BRIDGE_PORT"),
    ({"BRIDGE_PORT": "70000"}, "BRIDGE_PORT"),
    ({"BRIDGE_INSECURE_HTTP": "maybe"}, "BRIDGE_INSECURE_HTTP"),
    ({"BRIDGE_INSECURE_HTTP": None}, "BRIDGE_TLS_CERTFILE"),
    ({"BRIDGE_SERVICE_TOKENS": None}, "BRIDGE_SERVICE_TOKENS"),
    ({"BRIDGE_SERVICE_TOKENS": "ok,not ok!"}, "BRIDGE_SERVICE_TOKENS"),
    ({"BRIDGE_SERVICE_TOKENS": "x" * 51}, "BRIDGE_SERVICE_TOKENS"),
    ({"BRIDGE_TOPIC": "bad topic"}, "BRIDGE_TOPIC"),
    ({"BRIDGE_ROUTES": "AgentChat_*"}, "BRIDGE_ROUTES"),
    ({"BRIDGE_MALFORMED_PUSHES": "drop"}, "BRIDGE_MALFORMED_PUSHES"),
    ({"BRIDGE_MALFORMED_PUSHES": "quarantine", "BRIDGE_DEAD_LETTER_TOPIC": "off"}, "BRIDGE_MALFORMED_PUSHES"),
    ({"BRIDGE_SPOOL_MAX_BYTES": "1000"}, "BRIDGE_SPOOL_MAX_BYTES"),
    ({"BRIDGE_ROUTES": "A*=bad/topic"}, "BRIDGE_ROUTES"),
    ({"BRIDGE_PUSH_PATH": "no-slash"}, "BRIDGE_PUSH_PATH"),
    ({"BRIDGE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "BRIDGE_KAFKA_SECURITY_PROTOCOL"),
    ({"BRIDGE_KAFKA_SSL_CAFILE": "/nonexistent/ca.pem"}, "BRIDGE_KAFKA_SSL_CAFILE"),
    ({"BRIDGE_PUBLISH_TIMEOUT_S": "0"}, "BRIDGE_PUBLISH_TIMEOUT_S"),
    ({"BRIDGE_LOG_LEVEL": "loud"}, "BRIDGE_LOG_LEVEL"),
    ({"BRIDGE_PROT": "8043"}, "BRIDGE_PROT"),
    ({"BRIDGE_MANAGEMENT_PORT": "8043"}, "BRIDGE_MANAGEMENT_PORT"),
    ({"BRIDGE_DEAD_LETTER_TOPIC": "a b"}, "BRIDGE_DEAD_LETTER_TOPIC"),
    ({"BRIDGE_ATOMIC_PUSHES": "sometimes"}, "BRIDGE_ATOMIC_PUSHES"),
    ({"BRIDGE_PUSH_LOG_LEVEL": "trace"}, "BRIDGE_PUSH_LOG_LEVEL"),
])
def test_invalid_settings_name_the_variable(env, names):
    merged = {**BASE, **env}
    with pytest.raises(ConfigError) as error:
        config.load({k: v for k, v in merged.items() if v is not None})
    assert str(error.value).startswith(names)


def test_token_values_never_appear_in_errors():
    with pytest.raises(ConfigError) as error:
        config.load({**BASE, "BRIDGE_SERVICE_TOKENS": "good,s3cr3t-but-bad!"})
    assert "s3cr3t" not in str(error.value)


def test_tokenless_mode_needs_the_explicit_setting():
    env = {k: v for k, v in BASE.items() if k != "BRIDGE_SERVICE_TOKENS"}
    assert config.load({**env, "BRIDGE_ALLOW_NO_TOKEN": "true"}).service_tokens == ()


def test_kafka_client_certificate_needs_its_key(tmp_path: Path):
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    with pytest.raises(ConfigError, match="KAFKA_SSL_CERTFILE and BRIDGE_KAFKA_SSL_KEYFILE"):
        config.load({**BASE, "BRIDGE_KAFKA_SSL_CERTFILE": str(cert)})
