"""The local single-node Kafka (deploy/kafka-local: a KRaft node on loopback, its data kept in its
home directory across restarts) and the client settings that reach a local broker or cluster.

The listeners' ports are chosen once, when the Broker is made, so that a restarted broker is found
where clients expect it.
"""
from __future__ import annotations

import importlib.util
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from aiokafka.helpers import create_ssl_context

from .paths import ROOT
from .ports import free_port
from .processes import pause_process, resume_process

KAFKA_LOCAL = ROOT / "deploy" / "kafka-local"
SASL_USER = "bridge"


def load_script(name: str) -> ModuleType:
    """deploy/kafka-local/<name>.py (standard-library scripts, not a package), imported once."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, KAFKA_LOCAL / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def load_kafkalocal() -> ModuleType:
    return load_script("kafkalocal")


def load_kafkacluster() -> ModuleType:
    load_kafkalocal()  # kafkacluster imports it by name
    return load_script("kafkacluster")


def client_options(bootstrap: str, tls: Path, protocol: str = "SSL", mechanism: str | None = None,
                   password: str | None = None) -> dict:
    """aiokafka options for the local Kafka: SSL is mutual TLS with the local certificate, SASL_SSL
    checks the broker's certificate and logs in as the local SASL user (`password` overrides)."""
    options: dict = {"bootstrap_servers": bootstrap, "security_protocol": protocol}
    if protocol == "SSL":
        options["ssl_context"] = create_ssl_context(cafile=str(tls / "ca.pem"), certfile=str(tls / "server.pem"),
                                                    keyfile=str(tls / "server.key"))
    elif protocol == "SASL_SSL":
        options["ssl_context"] = create_ssl_context(cafile=str(tls / "ca.pem"))
    if protocol.startswith("SASL_"):
        options.update(sasl_mechanism=mechanism or "SCRAM-SHA-512", sasl_plain_username=SASL_USER,
                       sasl_plain_password=password or load_kafkalocal().USERS[SASL_USER])
    return options


def bridge_kafka_env(bootstrap: str, tls: Path, protocol: str = "SSL", mechanism: str | None = None,
                     password: str | None = None) -> dict[str, str]:
    """The BRIDGE_KAFKA_* settings matching client_options()."""
    env = {"BRIDGE_KAFKA_BOOTSTRAP_SERVERS": bootstrap, "BRIDGE_KAFKA_SECURITY_PROTOCOL": protocol}
    if protocol in ("SSL", "SASL_SSL"):
        env["BRIDGE_KAFKA_SSL_CAFILE"] = str(tls / "ca.pem")
    if protocol == "SSL":
        env.update(BRIDGE_KAFKA_SSL_CERTFILE=str(tls / "server.pem"), BRIDGE_KAFKA_SSL_KEYFILE=str(tls / "server.key"))
    if protocol.startswith("SASL_"):
        env.update(BRIDGE_KAFKA_SASL_MECHANISM=mechanism or "SCRAM-SHA-512", BRIDGE_KAFKA_SASL_USERNAME=SASL_USER,
                   BRIDGE_KAFKA_SASL_PASSWORD=password or load_kafkalocal().USERS[SASL_USER])
    return env


@dataclass
class Broker:
    """A single-node Kafka in `home`: mutual TLS on `ssl_port`, SASL on `sasl_ssl_port`/`sasl_port`."""

    home: Path
    tls: Path
    port: int = field(default_factory=free_port)
    ssl_port: int = field(default_factory=free_port)
    controller_port: int = field(default_factory=free_port)
    sasl_ssl_port: int = field(default_factory=free_port)
    sasl_port: int = field(default_factory=free_port)

    def __post_init__(self) -> None:
        self._kafkalocal = load_kafkalocal()
        self._paused = False

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.ssl_port}"

    def address(self, protocol: str = "SSL") -> str:
        port = {"PLAINTEXT": self.port, "SSL": self.ssl_port, "SASL_SSL": self.sasl_ssl_port,
                "SASL_PLAINTEXT": self.sasl_port}[protocol]
        return f"127.0.0.1:{port}"

    @property
    def pid(self) -> int | None:
        state = self._kafkalocal.read_state(self.home)
        if state and self._kafkalocal.pid_alive(state["pid"]):
            return state["pid"]
        return None

    def start(self) -> Broker:
        """Start (or restart after a kill) and return once the listeners accept connections."""
        try:
            self._kafkalocal.start(self.home, self.port, self.ssl_port, self.controller_port, self.tls,
                                   self.sasl_ssl_port, self.sasl_port)
        except SystemExit as exc:  # the script's way of failing; an exception is easier to handle here
            raise RuntimeError(f"the broker did not start: {exc}") from None
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush; what the broker acknowledged must still be on disk."""
        self.resume()
        self._kafkalocal.stop(self.home, signal.SIGKILL)

    def stop(self) -> None:
        self.resume()
        self._kafkalocal.stop(self.home)

    def pause(self) -> None:
        """SIGSTOP the JVM: connections stay open but nothing answers (a hung broker)."""
        self._paused = pause_process(self.pid) or self._paused

    def resume(self) -> None:
        if self._paused:
            resume_process(self.pid)
        self._paused = False

    def client_options(self, protocol: str = "SSL", mechanism: str | None = None, password: str | None = None) -> dict:
        """aiokafka options for reading back (default: mutual TLS with the local certificate)."""
        return client_options(self.address(protocol), self.tls, protocol, mechanism, password)

    def bridge_env(self, protocol: str = "SSL", mechanism: str | None = None,
                   password: str | None = None) -> dict[str, str]:
        return bridge_kafka_env(self.address(protocol), self.tls, protocol, mechanism, password)
