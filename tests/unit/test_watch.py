"""The watcher of secret files, on real files: a change is put in service once it has settled, a
Kubernetes-style symlink swap is a change, a version that cannot be used leaves the last good one in
service and is reported once, and the Kafka clients take what is in service."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from bridge import config
from bridge.auth import Authenticator
from bridge.config import read_token_file
from bridge.kafka.clients import client_options
from bridge.kafka.credentials import Credentials
from bridge.metrics import Metrics
from bridge.watch import SecretError, Watched, Watcher, watch_bridge_files
from tests.support import SecretVolume


class Holder:
    def __init__(self) -> None:
        self.tokens: tuple[str, ...] = ()

    def use(self, tokens: tuple[str, ...]) -> str:
        self.tokens = tokens
        return f"{len(tokens)} tokens"


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def watched_tokens(path: Path, holder: Holder) -> Watched:
    return Watched("tokens", "BRIDGE_SERVICE_TOKENS_FILE", (path,), lambda: read_token_file(path), holder.use)


def rewrite(path: Path, text: str) -> None:
    """Replace the file's content as an editor does: a new file renamed over the old one."""
    path.with_suffix(".new").write_text(text)
    os.replace(path.with_suffix(".new"), path)


async def test_a_change_is_put_in_service_once_it_has_settled(tmp_path):
    path, holder, metrics = tmp_path / "tokens", Holder(), Metrics()
    path.write_text("alpha\n")
    watcher = Watcher(metrics)
    watcher.watch(watched_tokens(path, holder))
    assert holder.tokens == ("alpha",)
    assert sample(metrics, "bridge_secret_loaded_timestamp_seconds", secret="tokens") > 0

    rewrite(path, "alpha\nbeta\n")
    await watcher.check()
    assert holder.tokens == ("alpha",), "a writer may still be at work: not yet"
    await watcher.check()
    assert holder.tokens == ("alpha", "beta")
    await watcher.check()
    assert sample(metrics, "bridge_secret_reloads_total", secret="tokens", result="ok") == 1, "read once"


async def test_a_secret_volume_update_is_a_change(tmp_path):
    volume = SecretVolume(tmp_path / "secret", {"service-tokens": b"alpha\n"})
    holder, watcher = Holder(), Watcher(Metrics())
    watcher.watch(watched_tokens(volume.path("service-tokens"), holder))
    volume.update({"service-tokens": b"gamma\n"})  # same size, new directory behind the same path
    await watcher.check()
    await watcher.check()
    assert holder.tokens == ("gamma",)


async def test_a_version_that_cannot_be_used_keeps_the_last_good_one_and_is_reported_once(tmp_path, caplog):
    path, holder, metrics = tmp_path / "tokens", Holder(), Metrics()
    path.write_text("alpha\n")
    watcher = Watcher(metrics)
    watcher.watch(watched_tokens(path, holder))
    rewrite(path, "")
    for _ in range(5):
        await watcher.check()
    assert holder.tokens == ("alpha",)
    assert sample(metrics, "bridge_secret_reloads_total", secret="tokens", result="failed") == 1
    assert sample(metrics, "bridge_secret_file_problem", secret="tokens") == 1
    problem = watcher.describe()["tokens"]
    assert problem["problem"] == "the file holds no token" and problem["in_service_since"] != "never"
    assert len([r for r in caplog.records if r.name == "bridge.watch" and r.levelname == "ERROR"]) == 1

    path.unlink()  # gone: the path leads to no file
    await watcher.check()
    await watcher.check()
    assert watcher.describe()["tokens"]["problem"].startswith("cannot be read: No such file or directory")
    assert holder.tokens == ("alpha",)

    path.write_text("beta\n")
    await watcher.check()
    await watcher.check()
    assert holder.tokens == ("beta",) and watcher.describe() == {}
    assert sample(metrics, "bridge_secret_file_problem", secret="tokens") == 0
    assert sample(metrics, "bridge_secret_reloads_total", secret="tokens", result="failed") == 2


async def test_a_version_that_changes_while_read_is_judged_once_it_settles(tmp_path):
    path, holder = tmp_path / "tokens", Holder()
    path.write_text("alpha\n")
    watcher, reads = Watcher(Metrics()), []

    def load() -> tuple[str, ...]:
        tokens = read_token_file(path)
        reads.append(tokens)
        if len(reads) == 2:  # the first read after the change: the writer comes back meanwhile
            rewrite(path, "beta\ngamma\n")
        return tokens

    watcher.watch(Watched("tokens", "BRIDGE_SERVICE_TOKENS_FILE", (path,), load, holder.use))
    rewrite(path, "beta\n")
    for _ in range(2):
        await watcher.check()
    assert holder.tokens == ("alpha",), "what was read may be half of a change: not used"
    for _ in range(2):
        await watcher.check()
    assert holder.tokens == ("beta", "gamma")


def test_a_required_file_that_cannot_be_used_at_start_is_an_error(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("\n")
    with pytest.raises(SecretError, match="BRIDGE_SERVICE_TOKENS_FILE: the file holds no token"):
        Watcher(Metrics()).watch(watched_tokens(path, Holder()))
    watcher = Watcher(Metrics())
    watcher.watch(watched_tokens(path, Holder()), required=False)
    assert watcher.describe()["tokens"]["in_service_since"] == "never"


async def test_kafka_clients_take_the_credentials_in_service(tmp_path):
    password = tmp_path / "password"
    password.write_text("first\n")
    settings = config.load({"BRIDGE_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "BRIDGE_INSECURE_HTTP": "true",
                            "BRIDGE_SERVICE_TOKENS": "t", "BRIDGE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                            "BRIDGE_KAFKA_SASL_MECHANISM": "PLAIN", "BRIDGE_KAFKA_SASL_USERNAME": "bridge",
                            "BRIDGE_KAFKA_SASL_PASSWORD_FILE": str(password)})
    credentials = Credentials(settings)  # the one holder of the process, handed to the watcher
    watcher = Watcher(Metrics())
    watch_bridge_files(watcher, settings, Authenticator(settings.service_tokens, False), None, credentials)
    assert client_options(settings, credentials)["sasl_plain_password"] == "first"
    rewrite(password, "second\n")
    await watcher.check()
    await watcher.check()
    assert client_options(settings, credentials)["sasl_plain_password"] == "second"
    rewrite(password, "\n")
    await watcher.check()
    await watcher.check()
    assert client_options(settings, credentials)["sasl_plain_password"] == "second", "an empty file is no password"
    assert watcher.describe()["kafka_sasl"]["problem"] == "the file is empty"
