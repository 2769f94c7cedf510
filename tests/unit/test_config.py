import dataclasses
import socket
from pathlib import Path

import pytest

from bridge import config
from bridge.config import ConfigError, Route, Settings
from bridge.settings import setting

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
    ({"BRIDGE_KAFKA_SECURITY_PROTOCOL": "SASL"}, "BRIDGE_KAFKA_SECURITY_PROTOCOL"),
    ({"BRIDGE_KAFKA_SSL_CAFILE": "/nonexistent/ca.pem"}, "BRIDGE_KAFKA_SSL_CAFILE"),
    ({"BRIDGE_PUBLISH_TIMEOUT_S": "0"}, "BRIDGE_PUBLISH_TIMEOUT_S"),
    ({"BRIDGE_LOG_LEVEL": "loud"}, "BRIDGE_LOG_LEVEL"),
    ({"BRIDGE_PROT": "8043"}, "BRIDGE_PROT"),
    ({"BRIDGE_MANAGEMENT_PORT": "8043"}, "BRIDGE_MANAGEMENT_PORT"),
    ({"BRIDGE_DEAD_LETTER_TOPIC": "a b"}, "BRIDGE_DEAD_LETTER_TOPIC"),
    ({"BRIDGE_ATOMIC_PUSHES": "sometimes"}, "BRIDGE_ATOMIC_PUSHES"),
    ({"BRIDGE_PUSH_LOG_LEVEL": "trace"}, "BRIDGE_PUSH_LOG_LEVEL"),
    ({"BRIDGE_PORT": "8043.0"}, "BRIDGE_PORT"),
    ({"BRIDGE_SPOOL_MAX_BYTES": "1e9"}, "BRIDGE_SPOOL_MAX_BYTES"),
    ({"BRIDGE_PUBLISH_TIMEOUT_S": "nan"}, "BRIDGE_PUBLISH_TIMEOUT_S"),
    ({"BRIDGE_SHUTDOWN_TIMEOUT_S": "soon"}, "BRIDGE_SHUTDOWN_TIMEOUT_S"),
    ({"BRIDGE_KAFKA_SSL_KEYFILE": "/nonexistent/key.pem"}, "BRIDGE_KAFKA_SSL_KEYFILE"),
])
def test_invalid_settings_name_the_variable(env, names):
    merged = {**BASE, **env}
    with pytest.raises(ConfigError) as error:
        config.load({k: v for k, v in merged.items() if v is not None})
    assert str(error.value).startswith(names)


def test_unset_and_blank_variables_take_the_declared_defaults():
    for settings in (config.load(BASE), config.load({**BASE, "BRIDGE_PORT": "  ", "BRIDGE_TOPIC": ""})):
        for f in dataclasses.fields(Settings):
            if f"BRIDGE_{f.name.upper()}" not in BASE and f.name != "replica_name":
                assert getattr(settings, f.name) == f.default, f.name
        assert settings.replica_name == socket.gethostname()  # derived by a rule when unset


def test_numbers_are_read_as_their_declared_type():
    settings = config.load({**BASE, "BRIDGE_PORT": " 9443 ", "BRIDGE_SHUTDOWN_TIMEOUT_S": "3"})
    assert settings.port == 9443 and type(settings.port) is int
    assert settings.shutdown_timeout_s == 3.0 and type(settings.shutdown_timeout_s) is float
    assert type(config.load({**BASE, "BRIDGE_MAX_BODY_BYTES": "2048"}).max_body_bytes) is int


def test_management_host_follows_host_unless_set():
    assert config.load({**BASE, "BRIDGE_HOST": "0.0.0.0"}).management_host == "0.0.0.0"
    settings = config.load({**BASE, "BRIDGE_HOST": "0.0.0.0", "BRIDGE_MANAGEMENT_HOST": "127.0.0.1"})
    assert (settings.host, settings.management_host) == ("0.0.0.0", "127.0.0.1")


def test_an_unknown_variable_is_named_before_the_setting_it_misspells():
    env = {k: v for k, v in BASE.items() if k != "BRIDGE_INSECURE_HTTP"}
    with pytest.raises(ConfigError) as error:
        config.load({**env, "BRIDGE_TLS_CERTFLE": "/etc/tls/server.pem"})
    assert str(error.value).startswith("BRIDGE_TLS_CERTFLE is not a setting")


def _declaration_mistake(**fields: tuple[type, object]) -> str:
    with pytest.raises(TypeError) as error:
        config._declared(dataclasses.make_dataclass("Bad", [(n, t, d) for n, (t, d) in fields.items()]))
    return str(error.value)


def test_mistakes_in_declarations_are_caught_at_import():
    """So a new setting cannot be half declared: these fail every test rather than a start."""
    assert "setting()" in _declaration_mistake(port=(int, dataclasses.field(default=1)))
    assert "within" in _declaration_mistake(port=(int, setting(1, "a port")))
    assert "within" in _declaration_mistake(name=(str, setting("x", "a name", within=(1, 2))))
    assert "outside" in _declaration_mistake(port=(int, setting(0, "a port", within=(1, 2))))
    assert "parse=" in _declaration_mistake(items=(list[str], setting(None, "items")))
    assert "secret" in _declaration_mistake(key=(Path, setting(None, "a key", secret=True)))
    assert "Literal" in _declaration_mistake(mode=(str, setting("a", "one of {choices}")))
    assert [s.name for s in config._declared(dataclasses.make_dataclass(
        "Good", [("port", int, setting(1, "a port", within=(1, 2)))]))] == ["port"]


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


SASL = {"BRIDGE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "BRIDGE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "BRIDGE_KAFKA_SASL_USERNAME": "bridge", "BRIDGE_KAFKA_SASL_PASSWORD": "pa ss=w0rd!"}
SECRET = "pa ss=w0rd!"


@pytest.mark.parametrize("protocol", ["SASL_SSL", "sasl_plaintext"])
@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "scram-sha-512"])
def test_sasl_settings(protocol, mechanism):
    settings = config.load({**BASE, **SASL, "BRIDGE_KAFKA_SECURITY_PROTOCOL": protocol,
                            "BRIDGE_KAFKA_SASL_MECHANISM": mechanism})
    assert settings.kafka_security_protocol == protocol.upper()
    assert settings.kafka_sasl_mechanism == mechanism.upper()
    assert (settings.kafka_sasl_username, settings.kafka_sasl_password) == ("bridge", SECRET)
    assert SECRET not in repr(settings)


@pytest.mark.parametrize("content", ["s3cret\n", "s3cret\r\n", "s3cret"])
def test_sasl_password_from_a_file_loses_only_the_line_end(tmp_path: Path, content):
    secret = tmp_path / "password"
    secret.write_bytes(f" {content}".encode())
    env = {**BASE, **SASL, "BRIDGE_KAFKA_SASL_PASSWORD": None, "BRIDGE_KAFKA_SASL_PASSWORD_FILE": str(secret)}
    settings = config.load({k: v for k, v in env.items() if v is not None})
    assert settings.kafka_sasl_password == " s3cret" and settings.kafka_sasl_password_file == secret


def test_no_sasl_settings_without_a_sasl_protocol():
    settings = config.load(BASE)
    assert (settings.kafka_sasl_mechanism, settings.kafka_sasl_username, settings.kafka_sasl_password) == (None,) * 3


def _problem(tmp_path: Path, **env: str | None) -> str:
    merged = {k: v for k, v in {**BASE, **SASL, **env}.items() if v is not None}
    with pytest.raises(ConfigError) as error:
        config.load(merged)
    message = str(error.value)
    assert SECRET not in message and "file-secret" not in message
    return message


@pytest.mark.parametrize("env, name", [
    ({"BRIDGE_KAFKA_SASL_MECHANISM": None}, "BRIDGE_KAFKA_SASL_MECHANISM"),
    ({"BRIDGE_KAFKA_SASL_MECHANISM": "GSSAPI"}, "BRIDGE_KAFKA_SASL_MECHANISM"),
    ({"BRIDGE_KAFKA_SASL_MECHANISM": "OAUTHBEARER"}, "BRIDGE_KAFKA_SASL_MECHANISM"),
    ({"BRIDGE_KAFKA_SASL_USERNAME": None}, "BRIDGE_KAFKA_SASL_USERNAME"),
    ({"BRIDGE_KAFKA_SASL_USERNAME": "  "}, "BRIDGE_KAFKA_SASL_USERNAME"),
    ({"BRIDGE_KAFKA_SASL_PASSWORD": None}, "BRIDGE_KAFKA_SASL_PASSWORD"),
    ({"BRIDGE_KAFKA_SASL_PASSWORD": ""}, "BRIDGE_KAFKA_SASL_PASSWORD"),
    ({"BRIDGE_KAFKA_SASL_PASSWORD_FILE": "/nonexistent/password"}, "BRIDGE_KAFKA_SASL_PASSWORD_FILE"),
    ({"BRIDGE_KAFKA_SECURITY_PROTOCOL": "SSL"}, "BRIDGE_KAFKA_SASL_MECHANISM"),
    ({"BRIDGE_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT", "BRIDGE_KAFKA_SASL_MECHANISM": None,
      "BRIDGE_KAFKA_SASL_USERNAME": None}, "BRIDGE_KAFKA_SASL_PASSWORD"),
    ({"BRIDGE_KAFKA_SASL_PASSWORDFILE": "x"}, "BRIDGE_KAFKA_SASL_PASSWORDFILE"),
])
def test_inconsistent_sasl_settings_name_the_variable(tmp_path, env, name):
    assert _problem(tmp_path, **env).startswith(name)


def test_a_password_given_twice_is_refused(tmp_path: Path):
    secret = tmp_path / "password"
    secret.write_text("file-secret\n")
    message = _problem(tmp_path, BRIDGE_KAFKA_SASL_PASSWORD_FILE=str(secret))
    assert message.startswith("BRIDGE_KAFKA_SASL_PASSWORD_FILE") and "BRIDGE_KAFKA_SASL_PASSWORD " in message


@pytest.mark.parametrize("content", [b"", b"\n", b"\xff\xfe not utf-8"])
def test_an_empty_or_unreadable_password_file_is_refused(tmp_path: Path, content):
    secret = tmp_path / "password"
    secret.write_bytes(content)
    message = _problem(tmp_path, BRIDGE_KAFKA_SASL_PASSWORD=None, BRIDGE_KAFKA_SASL_PASSWORD_FILE=str(secret))
    assert message.startswith("BRIDGE_KAFKA_SASL_PASSWORD_FILE")


def test_kafka_clients_get_the_sasl_login(tmp_path: Path):
    from bridge.kafka.clients import client_options
    from bridge.kafka.credentials import Credentials

    def kafka_client_options(settings: config.Settings) -> dict:
        return client_options(settings, Credentials(settings))

    ssl_options = kafka_client_options(config.load({**BASE, **SASL}))
    assert ssl_options["security_protocol"] == "SASL_SSL" and "ssl_context" in ssl_options
    assert (ssl_options["sasl_mechanism"], ssl_options["sasl_plain_username"],
            ssl_options["sasl_plain_password"]) == ("SCRAM-SHA-512", "bridge", SECRET)
    plain = kafka_client_options(config.load({**BASE, **SASL, "BRIDGE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT"}))
    assert "ssl_context" not in plain and plain["sasl_mechanism"] == "SCRAM-SHA-512"
    assert "sasl_mechanism" not in kafka_client_options(config.load(BASE))


def test_operator_commands_need_no_certificate_or_token():
    """`cc-bridge drain` opens no port: it reads Kafka's settings without HTTPS material or tokens,
    and the rules every setting obeys on its own still hold."""
    kafka_only = {"BRIDGE_KAFKA_BOOTSTRAP_SERVERS": "k1:9092", "BRIDGE_SPOOL_DIR": "/s"}
    with pytest.raises(ConfigError, match="BRIDGE_TLS_CERTFILE"):
        config.load(kafka_only)
    settings = config.load(kafka_only, serving=False)
    assert settings.spool_dir == Path("/s") and settings.service_tokens == ()
    assert settings.exit_drain_timeout_s == 60.0 and settings.join_window_s == 15.0
    with pytest.raises(ConfigError, match="BRIDGE_KAFKA_SSL_CERTFILE"):
        config.load({**kafka_only, "BRIDGE_KAFKA_SSL_KEYFILE": __file__}, serving=False)


def test_tokens_from_a_file_one_per_line(tmp_path: Path):
    tokens = tmp_path / "tokens"
    tokens.write_text("# the gateway's token\nalpha\n\n  beta_2  \r\nalpha\n")
    env = {k: v for k, v in BASE.items() if k != "BRIDGE_SERVICE_TOKENS"}
    settings = config.load({**env, "BRIDGE_SERVICE_TOKENS_FILE": str(tokens)})
    assert settings.service_tokens == ("alpha", "beta_2") and settings.service_tokens_file == tokens


@pytest.mark.parametrize("content, problem", [
    ("", "the file holds no token"),
    ("# nothing but a comment\n\n", "the file holds no token"),
    ("alpha\ns3cr3t,beta\n", "line 2 (11 characters) is not a token"),
    ("alpha\nthe gateway's s3cr3t\n", "line 2 (20 characters) is not a token"),
])
def test_a_token_file_that_cannot_be_used_stops_the_bridge_at_start(tmp_path: Path, content, problem):
    tokens = tmp_path / "tokens"
    tokens.write_text(content)
    env = {k: v for k, v in BASE.items() if k != "BRIDGE_SERVICE_TOKENS"}
    with pytest.raises(ConfigError) as error:
        config.load({**env, "BRIDGE_SERVICE_TOKENS_FILE": str(tokens)})
    assert str(error.value).startswith(f"BRIDGE_SERVICE_TOKENS_FILE={str(tokens)!r}: {problem}")
    assert "s3cr3t" not in str(error.value)


def test_tokens_are_given_one_way_only(tmp_path: Path):
    tokens = tmp_path / "tokens"
    tokens.write_text("alpha\n")
    with pytest.raises(ConfigError, match="BRIDGE_SERVICE_TOKENS and BRIDGE_SERVICE_TOKENS_FILE are both set"):
        config.load({**BASE, "BRIDGE_SERVICE_TOKENS_FILE": str(tokens)})
    env = {k: v for k, v in BASE.items() if k != "BRIDGE_SERVICE_TOKENS"}
    with pytest.raises(ConfigError, match=r"BRIDGE_SERVICE_TOKENS_FILE='.*': no such file"):
        config.load({**env, "BRIDGE_SERVICE_TOKENS_FILE": str(tmp_path / "missing")})
    with pytest.raises(ConfigError, match=r"BRIDGE_SERVICE_TOKENS is not set.*BRIDGE_SERVICE_TOKENS_FILE"):
        config.load(env)
