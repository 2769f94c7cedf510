"""SASL against the real broker: the bridge logs in with each mechanism the project supports,
publishes, and the checker's command line reads the records back with the same login. A wrong
password leaves the process running and not ready, with an error that names SASL authentication."""
from __future__ import annotations

import asyncio
import json
import time
import uuid

import orjson
import pytest
from conftest import TOKEN, push_headers

from bench import verify
from bench.verify import read_committed
from tests.support import BridgeProcess, SecretVolume

pytestmark = pytest.mark.integration
PASSWORD = "bridge-secret"  # the local broker's SASL user (deploy/kafka-local/kafkalocal.py USERS)


def sasl_env(kafka, protocol: str, mechanism: str, topic: str, **extra: str) -> dict[str, str]:
    return {**kafka.bridge_env(protocol, mechanism), "BRIDGE_TOPIC": topic, "BRIDGE_SERVICE_TOKENS": TOKEN,
            "BRIDGE_CREATE_TOPICS": "true", "BRIDGE_TOPIC_PARTITIONS": "3", "BRIDGE_DEAD_LETTER_TOPIC": "off", **extra}


def checker_options(kafka, protocol: str, mechanism: str, password_file) -> dict:
    """The checker's own command line (python -m bench.verify), SASL flags included."""
    args = verify.parse_args(["--ledger", "unused", "--topics", "unused", "--bootstrap", kafka.address(protocol),
                              "--security-protocol", protocol, "--cafile", str(kafka.tls / "ca.pem"),
                              "--sasl-mechanism", mechanism, "--sasl-username", "bridge",
                              "--sasl-password-file", str(password_file)])
    return verify.client_options(args)


@pytest.mark.parametrize("protocol, mechanism, from_file", [
    ("SASL_SSL", "PLAIN", False),
    ("SASL_SSL", "SCRAM-SHA-256", False),
    ("SASL_SSL", "SCRAM-SHA-512", True),
    ("SASL_PLAINTEXT", "SCRAM-SHA-512", False),
])
async def test_the_bridge_publishes_over_sasl(kafka, tls_dir, tmp_path, client, protocol, mechanism, from_file):
    topic = f"test.sasl.{uuid.uuid4().hex[:8]}"
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD + "\n")  # as a Kubernetes Secret volume would hold it
    extra = {"BRIDGE_KAFKA_SASL_PASSWORD": "", "BRIDGE_KAFKA_SASL_PASSWORD_FILE": str(password_file)} if from_file else {}
    process = BridgeProcess(sasl_env(kafka, protocol, mechanism, topic, **extra), tls_dir).start(tmp_path)
    try:
        body = orjson.dumps({"workNo": "4711", "eventList": [{"eventType": "AgentState_Ready", "content": mechanism}]})
        response = await client.post(process.url, body, push_headers())
        assert (response.status, orjson.loads(response.body)["retcode"]) == (200, "0"), response.text
    finally:
        await process.astop()
    records = await read_committed(checker_options(kafka, protocol, mechanism, password_file), [topic], 60)
    assert [(r.key, orjson.loads(r.value)["content"]) for r in records] == [(b"4711", mechanism)]
    assert PASSWORD not in process.log()


async def test_a_wrong_password_is_a_clear_error_and_no_crash_loop(kafka, tls_dir, tmp_path, client):
    wrong = "not-the-" + uuid.uuid4().hex[:6]
    env = sasl_env(kafka, "SASL_SSL", "SCRAM-SHA-256", "test.sasl.refused", BRIDGE_KAFKA_SASL_PASSWORD=wrong)
    process = BridgeProcess(env, tls_dir).start(tmp_path, ready=False)
    try:
        deadline = time.monotonic() + 60
        while not [line for line in log_lines(process) if "SaslAuthenticationFailed" in line["message"]]:
            assert process.proc.poll() is None, f"the bridge exited:\n{process.log_tail()}"
            assert time.monotonic() < deadline, f"no SASL authentication error logged:\n{process.log_tail()}"
            await asyncio.sleep(0.2)
        failure = next(line for line in log_lines(process) if "SaslAuthenticationFailed" in line["message"])
        assert failure["level"] == "error" and "SCRAM-SHA-256" in failure["message"], failure
        for _ in range(2):  # across more than one reconnection attempt: still serving, still not ready
            await asyncio.sleep(1.5)
            assert process.proc.poll() is None, f"the bridge exited:\n{process.log_tail()}"
            assert (await client.request("GET", process.management_url + "/readyz")).status == 503
            assert (await client.request("GET", process.management_url + "/healthz")).status == 200
        body = orjson.dumps({"workNo": "4711", "eventList": [{"eventType": "AgentState_Ready"}]})
        assert (await client.post(process.url, body, push_headers())).status == 503
        assert wrong not in process.log()
    finally:
        await process.astop()


def log_lines(process: BridgeProcess) -> list[dict]:
    lines = []
    for text in process.log().splitlines():
        try:
            lines.append(json.loads(text))
        except ValueError:
            continue
    return lines


async def test_the_password_file_is_read_again_for_the_next_connection(kafka, tls_dir, tmp_path, client):
    """A wrong password in the file: the bridge keeps trying and stays not ready; once the file holds
    the right one, the next connection logs in, without a restart."""

    volume = SecretVolume(tmp_path / "kafka-sasl", {"password": b"not-the-password\n"})
    env = sasl_env(kafka, "SASL_SSL", "SCRAM-SHA-512", f"test.sasl.{uuid.uuid4().hex[:8]}",
                   BRIDGE_KAFKA_SASL_PASSWORD="", BRIDGE_KAFKA_SASL_PASSWORD_FILE=str(volume.path("password")))
    process = BridgeProcess(env, tls_dir).start(tmp_path, ready=False)
    try:
        deadline = time.monotonic() + 30
        while not [line for line in log_lines(process) if "SaslAuthenticationFailed" in line["message"]]:
            assert time.monotonic() < deadline, f"no SASL authentication error logged:\n{process.log_tail()}"
            await asyncio.sleep(0.2)
        assert (await client.request("GET", process.management_url + "/readyz")).status == 503
        volume.update({"password": (PASSWORD + "\n").encode()})
        changed = time.monotonic()
        while (await client.request("GET", process.management_url + "/readyz")).status != 200:
            assert time.monotonic() - changed < 15, f"not connected with the new password:\n{process.log_tail()}"
            await asyncio.sleep(0.2)
        body = orjson.dumps({"workNo": "4711", "eventList": [{"eventType": "AgentState_Ready"}]})
        assert (await client.post(process.url, body, push_headers())).status == 200
    finally:
        await process.astop()
    print(f"logged in {time.monotonic() - changed:.1f} s after the password file changed")
    assert PASSWORD not in process.log() and "not-the-password" not in process.log()
    reloaded = [line for line in log_lines(process) if line.get("logger") == "bridge.watch"
                and line["message"].startswith("BRIDGE_KAFKA_SASL_PASSWORD_FILE: a new version is in service")]
    assert len(reloaded) == 1
