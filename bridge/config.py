"""Reading the settings: BRIDGE_* environment variables to one validated, frozen Settings.

load() checks, in this order: that every BRIDGE_* variable is a setting; each variable on its own,
as its declaration in bridge.settings says (type, range, parser); then RULES, the checks and
defaults that tie settings together. The first problem raises ConfigError naming the variable;
`python -m bridge serve` prints it and exits with code 2 before opening any port. The rest of the
code receives the Settings and never reads the environment itself.
"""
from __future__ import annotations

import dataclasses
import os
import socket
import typing
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

from .settings import (
    PREFIX,
    SPOOLED_PUBLISH_TIMEOUT_S,
    TOKEN_PATTERN,
    ConfigError,
    Declaration,
    Route,
    SaslMechanism,
    Settings,
    choices_of,
    optional_of,
)

__all__ = ["PREFIX", "RULES", "TOKEN_PATTERN", "ConfigError", "Route", "Settings", "load", "read_token_file",
           "token_lines"]

Given = frozenset[str]  # the fields whose variable is set (not blank)
Rule = Callable[[Settings, Given], Settings]


# ------------------------------------------------------------------------- one variable at a time

def _text(name: str, value: str) -> str:
    return value


def _int(name: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not an integer") from None


def _float(name: str, value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not a number") from None


def _flag(name: str, value: str) -> bool:
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={value!r} is not a boolean (use true or false)")


def _file(name: str, value: str) -> Path:
    if not Path(value).is_file():
        raise ConfigError(f"{name}={value!r}: no such file")
    return Path(value)


def _choice(choices: tuple[str, ...], name: str, value: str) -> str:
    """One of `choices`, written as declared whatever the case of `value`."""
    for choice in choices:
        if choice.lower() == value.lower():
            return choice
    raise ConfigError(f"{name}={value!r} must be one of {', '.join(choices)}")


_READERS: dict[object, Callable[[str, str], Any]] = {
    str: _text, int: _int, float: _float, bool: _flag, Path: _file}


@dataclasses.dataclass(frozen=True)
class _Setting:
    """A field of Settings with what reading it takes."""

    name: str
    variable: str
    default: Any  # dataclasses.MISSING for a required setting
    declaration: Declaration
    read: Callable[[str, str], Any]


def _mistake(f: dataclasses.Field[Any], hint: Any, choices: tuple[str, ...], read: object) -> str | None:
    declaration: Declaration = f.metadata["setting"]
    if read is None:
        return f"no reader for {hint}: give its declaration parse="
    if (hint in (int, float)) != (declaration.within is not None):
        return "a number needs `within`, and only a number has one"
    if declaration.within is not None and isinstance(f.default, int | float) and not (
            declaration.within[0] <= f.default <= declaration.within[1]):
        return "its default is outside `within`"
    if declaration.secret and hint is not str:
        return "`secret` is for text"
    if "{choices}" in declaration.doc and not choices:
        return "`{choices}` in its doc needs a Literal type"
    return None


def _declared(cls: type[Any]) -> tuple[_Setting, ...]:
    """The fields of `cls` (Settings) with their readers. A mistake in a declaration raises TypeError
    at import, so it fails every test rather than a start in production."""
    hints = typing.get_type_hints(cls)
    found = []
    for f in dataclasses.fields(cls):
        declaration = f.metadata.get("setting")
        if not isinstance(declaration, Declaration):
            raise TypeError(f"Settings.{f.name}: declare it with setting() or required()")
        hint = optional_of(hints[f.name])  # X of X | None: unset means None
        choices = choices_of(hint)
        read = declaration.parse or (partial(_choice, choices) if choices else _READERS.get(hint))
        mistake = _mistake(f, hint, choices, read)
        if mistake is not None or read is None:
            raise TypeError(f"Settings.{f.name}: {mistake}")
        found.append(_Setting(f.name, PREFIX + f.name.upper(), f.default, declaration, read))
    return tuple(found)


SETTINGS = _declared(Settings)
_VARIABLES = frozenset(s.variable for s in SETTINGS)


def load(env: Mapping[str, str] | None = None, serving: bool = True) -> Settings:
    """Build Settings from the environment; raise ConfigError on the first invalid variable.
    `serving=False` (operator commands that open no port, such as `drain`) skips the rules about
    the push and management ports: HTTPS material, tokens."""
    env = os.environ if env is None else env
    unknown = sorted(name for name in env if name.startswith(PREFIX) and name not in _VARIABLES)
    if unknown:
        raise ConfigError(f"{unknown[0]} is not a setting of the bridge (a typo?)")
    values: dict[str, Any] = {}
    for s in SETTINGS:
        text = env.get(s.variable)
        # A blank variable counts as unset; a secret is taken exactly as given (spaces may be part of it).
        text = text if text is None or s.declaration.secret else text.strip()
        if not text:
            if s.default is dataclasses.MISSING:
                raise ConfigError(f"{s.variable} is not set: {s.declaration.doc.replace('`', '')}")
            continue  # the default declared in Settings
        value = values[s.name] = s.read(s.variable, text)
        if s.declaration.within is not None and not s.declaration.within[0] <= value <= s.declaration.within[1]:
            low, high = s.declaration.within
            raise ConfigError(f"{s.variable}={value} is outside {low}..{high}")
    settings = Settings(**values)
    given = frozenset(values)
    for rule in RULES:
        if serving or rule not in SERVING_RULES:
            settings = rule(settings, given)
    return settings


# ------------------------------------------------------------------ rules across several settings

def _https(s: Settings, given: Given) -> Settings:
    if not s.insecure_http and (s.tls_certfile is None or s.tls_keyfile is None):
        missing = "TLS_CERTFILE" if s.tls_certfile is None else "TLS_KEYFILE"
        raise ConfigError(f"{PREFIX}{missing} is not set: HTTPS needs a certificate and key (or set "
                          f"{PREFIX}INSECURE_HTTP=true when TLS is terminated in front of the bridge)")
    return s


TOKENS_FILE = f"{PREFIX}SERVICE_TOKENS_FILE"


def token_lines(text: str) -> tuple[str, ...]:
    """The tokens of a token file: one per line; blank lines and lines starting with '#' are skipped.
    A file with no token, or a line that is not a token, is refused whole; the message never quotes
    a line."""
    found: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        token = line.strip()
        if not token or token.startswith("#"):
            continue
        if not TOKEN_PATTERN.fullmatch(token):
            raise ConfigError(f"line {number} ({len(token)} characters) is not a token: 1-50 of A-Z, a-z, 0-9, "
                              "'-' or '_', one per line")
        found.append(token)
    if not found:
        raise ConfigError("the file holds no token")
    return tuple(dict.fromkeys(found))


def read_token_file(path: Path) -> tuple[str, ...]:
    """token_lines() of the file at `path`; raises OSError or ValueError (UnicodeDecodeError, ConfigError)."""
    return token_lines(path.read_text(encoding="utf-8"))


def _tokens(s: Settings, given: Given) -> Settings:
    path = s.service_tokens_file
    if path is not None:
        if "service_tokens" in given:
            raise ConfigError(f"{PREFIX}SERVICE_TOKENS and {TOKENS_FILE} are both set: give the tokens one way only "
                              "(the file is read again when it changes; the variable only at start)")
        try:
            tokens = read_token_file(path)
        except OSError as exc:
            raise ConfigError(f"{TOKENS_FILE}={str(path)!r} cannot be read ({type(exc).__name__})") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{TOKENS_FILE}={str(path)!r} is not UTF-8 text") from None
        except ConfigError as exc:
            raise ConfigError(f"{TOKENS_FILE}={str(path)!r}: {exc}") from None
        return dataclasses.replace(s, service_tokens=tokens)
    if not s.service_tokens and not s.allow_no_token:
        raise ConfigError(f"{PREFIX}SERVICE_TOKENS is not set: list the service_token values the gateway sends "
                          f"(comma-separated), or name a file of them in {TOKENS_FILE}, or set "
                          f"{PREFIX}ALLOW_NO_TOKEN=true to accept pushes without one")
    return s


def _kafka_client_certificate(s: Settings, given: Given) -> Settings:
    if (s.kafka_ssl_certfile is None) != (s.kafka_ssl_keyfile is None):
        raise ConfigError(f"{PREFIX}KAFKA_SSL_CERTFILE and {PREFIX}KAFKA_SSL_KEYFILE go together")
    return s


def _sasl(s: Settings, given: Given) -> Settings:
    """The SASL settings, checked together; the password (from the variable or the file) is never
    part of a message."""
    protocol = s.kafka_security_protocol
    if not protocol.startswith("SASL_"):
        names = ("kafka_sasl_mechanism", "kafka_sasl_username", "kafka_sasl_password", "kafka_sasl_password_file")
        name = next((n for n in names if n in given), None)
        if name is not None:
            raise ConfigError(f"{PREFIX}{name.upper()} is set but {PREFIX}KAFKA_SECURITY_PROTOCOL={protocol} does "
                              "not use SASL (use SASL_SSL or SASL_PLAINTEXT)")
        return s
    if s.kafka_sasl_mechanism is None:
        raise ConfigError(f"{PREFIX}KAFKA_SASL_MECHANISM is not set: {protocol} needs one of "
                          f"{', '.join(typing.get_args(SaslMechanism))}")
    if s.kafka_sasl_username is None:
        raise ConfigError(f"{PREFIX}KAFKA_SASL_USERNAME is not set: {protocol} needs a user name")
    password_file = s.kafka_sasl_password_file
    if password_file is None:
        if s.kafka_sasl_password is None:
            raise ConfigError(f"{PREFIX}KAFKA_SASL_PASSWORD is not set: {protocol} needs a password "
                              f"(or {PREFIX}KAFKA_SASL_PASSWORD_FILE, a file holding it)")
        return s
    if s.kafka_sasl_password is not None:
        raise ConfigError(f"{PREFIX}KAFKA_SASL_PASSWORD_FILE and {PREFIX}KAFKA_SASL_PASSWORD are both set: "
                          "give the password one way only")
    try:
        password = password_file.read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{PREFIX}KAFKA_SASL_PASSWORD_FILE={str(password_file)!r} cannot be read "
                          f"({type(exc).__name__})") from None
    if not password:
        raise ConfigError(f"{PREFIX}KAFKA_SASL_PASSWORD_FILE={str(password_file)!r} is empty")
    return dataclasses.replace(s, kafka_sasl_password=password)


def _dead_letters(s: Settings, given: Given) -> Settings:
    if "malformed_pushes" not in given and s.dead_letter_topic is None:
        return dataclasses.replace(s, malformed_pushes="refuse")
    if s.malformed_pushes == "quarantine" and s.dead_letter_topic is None:
        raise ConfigError(f"{PREFIX}MALFORMED_PUSHES=quarantine needs a dead-letter topic "
                          f"({PREFIX}DEAD_LETTER_TOPIC is off)")
    return s


def _publish_timeout(s: Settings, given: Given) -> Settings:
    if "publish_timeout_s" not in given and s.spool_dir is not None:
        return dataclasses.replace(s, publish_timeout_s=SPOOLED_PUBLISH_TIMEOUT_S)
    return s


def _management(s: Settings, given: Given) -> Settings:
    if s.management_port == s.port:
        raise ConfigError(f"{PREFIX}MANAGEMENT_PORT={s.management_port} must differ from {PREFIX}PORT")
    return s if "management_host" in given else dataclasses.replace(s, management_host=s.host)


# Applied in this order after every variable was read on its own; each returns the settings,
# changed where a default depends on another setting.
def _replica(s: Settings, given: Given) -> Settings:
    return s if s.replica_name is not None else dataclasses.replace(s, replica_name=socket.gethostname())


RULES: tuple[Rule, ...] = (_https, _tokens, _kafka_client_certificate, _sasl, _dead_letters, _publish_timeout,
                           _management, _replica)
SERVING_RULES = (_https, _tokens, _management)
