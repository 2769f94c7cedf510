"""Secrets that change while the bridge serves, and refusal floods, against real bridge processes
over real TLS and a real broker: tokens and certificates from files laid out as a Kubernetes Secret
volume, changed the way the kubelet changes them, while a gateway-like load pushes with a valid
token. The full-size figures: python -m bench.rotation."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import aiohttp
import orjson
import pytest
from conftest import bridge_env, push_headers

from bench.rotation import (
    EFFECT_LIMIT_S,
    Load,
    OpenConnection,
    SecretVolume,
    about_refused_tokens,
    burst,
    certificate_fingerprint,
    client_context,
    log_lines,
    metric,
    served_fingerprint,
    status_of,
    tls_files,
    until,
)
from bench.rotation import PUSH_PATH as PATH
from tests.support import ROOT, BridgeProcess, make_tls

pytestmark = pytest.mark.integration
OLD, NEW = "rotation-old", "rotation-new"
FAILED_TOKENS = 'bridge_secret_reloads_total{result="failed",secret="tokens"}'


@pytest.fixture(scope="module")
def second_tls(tmp_path_factory):
    """Another certificate for localhost, from a CA of its own."""

    return make_tls(tmp_path_factory.mktemp("second-tls"))


@pytest.fixture
async def sessions(tls_dir, second_tls):
    """Two HTTPS clients trusting both CAs: keep-alive connections, and a new connection per request."""
    context = client_context(tls_dir / "ca.pem", second_tls / "ca.pem")
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context, limit=64), timeout=timeout) as kept, \
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context, force_close=True),
                                  timeout=timeout) as fresh:
        yield kept, fresh


def token_env(kafka, topic: str, volume: SecretVolume, **extra: str) -> dict[str, str]:
    env = bridge_env(kafka, topic, BRIDGE_SERVICE_TOKENS_FILE=str(volume.path("service-tokens")), **extra)
    del env["BRIDGE_SERVICE_TOKENS"]
    return env


async def readiness(session: aiohttp.ClientSession, bridge: BridgeProcess) -> tuple[int, dict]:
    async with session.get(bridge.management_url + "/readyz") as reply:
        return reply.status, orjson.loads(await reply.read())


# ---------------------------------------------------------------------------------- refusal floods

async def test_a_wrong_token_flood_is_counted_in_full_and_logged_at_a_bounded_rate(kafka, tls_dir, tmp_path,
                                                                                  sessions):
    session, _ = sessions
    env = bridge_env(kafka, "test.flood", BRIDGE_MALFORMED_PUSHES="refuse", BRIDGE_DEAD_LETTER_TOPIC="test.flood.dead")
    process = BridgeProcess(env, tls_dir).start(tmp_path)
    try:
        answers = await burst(session, process.url, 3000)
        # An authenticated gateway's refused push is an agent at risk: logged every time, flood or not.
        for _ in range(20):
            async with session.post(process.url, data=b"{not json", headers=push_headers()) as reply:
                assert reply.status == 400
        await asyncio.sleep(0.5)
        counted = await metric(session, process.management_url, 'bridge_pushes_rejected_total{reason="token"}')
        held = await metric(session, process.management_url, 'bridge_log_lines_held_back_total{reason="token"}')
    finally:
        await process.astop()
    assert answers == {"403 000-003": 3000}, "every request answered 403 with the JSON body"
    assert counted == 3000, "the metric counts every refusal"
    lines = log_lines(process.log_path)
    about = [line for line in lines if about_refused_tokens(line)]
    assert 1 <= len(about) <= 10, f"{len(about)} log lines about 3000 refusals"
    assert held == 3000 - len(about)
    assert all(line["guid"] == "279f****.AgentGateway1" for line in about if "guid" in line)
    malformed = [line for line in lines if line.get("operation") == "pushEvent" and line.get("status") == 400]
    assert len(malformed) == 20 and all(line["retcode"] == "000-006" for line in malformed)
    assert "not-a-token-of-ours" not in process.log_path.read_text()


# ---------------------------------------------------------------------------------------- tokens

async def test_tokens_rotate_live_under_load_without_a_failed_push(kafka, tls_dir, tmp_path, sessions):
    session, fresh = sessions
    volume = SecretVolume(tmp_path / "tokens", {"service-tokens": f"{OLD}\n".encode()})
    process = BridgeProcess(token_env(kafka, "test.rotation.tokens", volume), tls_dir).start(tmp_path)
    load = Load(process.url, [session, fresh], OLD, agents=6).start()
    try:
        await asyncio.sleep(1.5)
        assert await status_of(session, process.url, NEW) == 403

        volume.update({"service-tokens": f"# rotation under way\n{OLD}\n{NEW}\n".encode()})
        added = await until(lambda: accepted(session, process.url, NEW), EFFECT_LIMIT_S)
        load.token = NEW  # the gateway switches to the new token
        await asyncio.sleep(1)
        volume.update({"service-tokens": f"{NEW}\n".encode()})
        removed = await until(lambda: refused(session, process.url, OLD), EFFECT_LIMIT_S)
        await asyncio.sleep(1)
    finally:
        await load.stop()
        reloads = await metric(session, process.management_url,
                               'bridge_secret_reloads_total{result="ok",secret="tokens"}')
        await process.astop()
    print(f"token accepted {added:.2f} s after it was added, refused {removed:.2f} s after it was removed; "
          f"{load.ok} pushes")
    assert load.failures == [], "a push with a valid token failed during the rotation"
    assert load.ok > 50, "the load did not run"
    assert reloads == 2
    messages = [line["message"] for line in log_lines(process.log_path) if line.get("logger") == "bridge.watch"]
    assert any("2 tokens accepted (1 added, 0 removed)" in m for m in messages), messages
    assert any("1 token accepted (0 added, 1 removed)" in m for m in messages), messages
    assert OLD not in process.log_path.read_text() and NEW not in process.log_path.read_text()


async def accepted(session: aiohttp.ClientSession, url: str, token: str) -> bool:
    return await status_of(session, url, token) == 200


async def refused(session: aiohttp.ClientSession, url: str, token: str) -> bool:
    return await status_of(session, url, token) == 403


async def test_a_broken_token_file_keeps_the_last_good_set_and_says_so(kafka, tls_dir, tmp_path, sessions):
    session, _ = sessions
    volume = SecretVolume(tmp_path / "tokens", {"service-tokens": f"{OLD}\n".encode()})
    process = BridgeProcess(token_env(kafka, "test.rotation.broken", volume), tls_dir).start(tmp_path)
    problems = []

    async def judged(failures: int) -> None:
        """Until the watcher has refused `failures` versions."""
        async def done() -> bool:
            return await metric(session, process.management_url, FAILED_TOKENS) >= failures
        await until(done, EFFECT_LIMIT_S)

    try:
        for n, broken in enumerate((b"", b"\n# only a comment\n", b"\xff\xfe not text", f"{OLD},{NEW}\n".encode()), 1):
            volume.update({"service-tokens": broken})
            await judged(n)
            assert await status_of(session, process.url, OLD) == 200, f"locked out by {broken!r}"
            status, body = await readiness(session, process)
            assert status == 200 and body["status"] == "ready"
            problems.append(body["secrets"]["tokens"]["problem"])
        os.unlink(volume.path("service-tokens"))  # unreadable: the path leads nowhere
        await judged(5)
        assert await status_of(session, process.url, OLD) == 200
        problems.append((await readiness(session, process))[1]["secrets"]["tokens"]["problem"])
        failed = await metric(session, process.management_url, FAILED_TOKENS)
        flagged = await metric(session, process.management_url, 'bridge_secret_file_problem{secret="tokens"}')

        volume.path("service-tokens").symlink_to("..data/service-tokens")
        volume.update({"service-tokens": f"{NEW}\n".encode()})
        await until(lambda: accepted(session, process.url, NEW), EFFECT_LIMIT_S)
        assert await status_of(session, process.url, OLD) == 403
        status, body = await readiness(session, process)
        cleared = await metric(session, process.management_url, 'bridge_secret_file_problem{secret="tokens"}')
    finally:
        await process.astop()
    assert problems[:2] == ["the file holds no token"] * 2
    assert problems[2] == "not UTF-8 text"
    assert problems[3].startswith("line 1 (") and OLD not in problems[3]
    assert problems[4].startswith("cannot be read: No such file")
    assert (failed, flagged, cleared) == (5, 1, 0)
    assert status == 200 and "secrets" not in body
    errors = [line for line in log_lines(process.log_path) if line.get("logger") == "bridge.watch"
              and line["level"] == "error"]
    assert len(errors) == 5 and all("the last good version stays in service" in e["message"] for e in errors)


def test_giving_the_tokens_both_ways_stops_the_bridge_at_start(tls_dir, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{OLD}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env.update(BRIDGE_KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1", BRIDGE_TLS_CERTFILE=str(tls_dir / "server.pem"),
               BRIDGE_TLS_KEYFILE=str(tls_dir / "server.key"), BRIDGE_SERVICE_TOKENS=NEW,
               BRIDGE_SERVICE_TOKENS_FILE=str(tokens))
    result = subprocess.run([sys.executable, "-m", "bridge", "serve"], env=env, cwd=ROOT, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 2
    assert ("configuration error: BRIDGE_SERVICE_TOKENS and BRIDGE_SERVICE_TOKENS_FILE are both set: give the "
            "tokens one way only") in result.stderr
    assert OLD not in result.stderr and NEW not in result.stderr


# ----------------------------------------------------------------------------------- certificates

async def test_a_certificate_swapped_the_kubernetes_way_reaches_new_connections_only(
        kafka, tls_dir, second_tls, tmp_path, sessions):
    session, fresh = sessions
    certs = SecretVolume(tmp_path / "certs", tls_files(tls_dir))
    env = bridge_env(kafka, "test.rotation.tls", BRIDGE_TLS_CERTFILE=str(certs.path("tls.crt")),
                     BRIDGE_TLS_KEYFILE=str(certs.path("tls.key")))
    process = BridgeProcess(env, tls_dir).start(tmp_path)
    context = client_context(tls_dir / "ca.pem", second_tls / "ca.pem")
    old, new = certificate_fingerprint(tls_dir / "server.pem"), certificate_fingerprint(second_tls / "server.pem")
    load = Load(process.url, [session, fresh], "Tok3n-for_tests", agents=6).start()
    opened = await asyncio.to_thread(OpenConnection, process.port, context)
    try:
        assert opened.fingerprint == old and await asyncio.to_thread(opened.push, "Tok3n-for_tests", PATH) == 200
        await asyncio.sleep(1)

        certs.update(tls_files(second_tls))

        async def served_new() -> bool:
            return await asyncio.to_thread(served_fingerprint, process.port, context) == new

        swapped = await until(served_new, EFFECT_LIMIT_S)
        await asyncio.sleep(1)
        assert await asyncio.to_thread(opened.push, "Tok3n-for_tests", PATH) == 200, "the open connection broke"

        # A broken pair (the old certificate with the new key) never replaces the certificate in service.
        certs.update({"tls.crt": (tls_dir / "server.pem").read_bytes(), "tls.key": (second_tls / "server.key").read_bytes()})
        await asyncio.sleep(2.5)
        served = await asyncio.to_thread(served_fingerprint, process.port, context)
        status, body = await readiness(session, process)
        failed = await metric(session, process.management_url, 'bridge_secret_reloads_total{result="failed",secret="tls"}')
        await asyncio.sleep(0.5)
    finally:
        await load.stop()
        opened.close()
        await process.astop()
    print(f"new certificate served {swapped:.2f} s after the swap; {load.ok} pushes")
    assert load.failures == [], "a push failed while the certificate changed"
    assert load.ok > 50
    assert served == new, "the broken pair replaced the certificate"
    assert status == 200 and "KEY_VALUES_MISMATCH" in body["secrets"]["tls"]["problem"]
    assert failed == 1
    errors = [line["message"] for line in log_lines(process.log_path) if line.get("logger") == "bridge.watch"
              and line["level"] == "error"]
    assert len(errors) == 1 and errors[0].startswith("BRIDGE_TLS_CERTFILE/BRIDGE_TLS_KEYFILE: the new version")


async def test_an_unusable_certificate_at_start_stops_the_bridge(kafka, tls_dir, second_tls, tmp_path):
    mismatched = tmp_path / "mismatched.key"
    mismatched.write_bytes((second_tls / "server.key").read_bytes())
    env = bridge_env(kafka, "test.rotation.start", BRIDGE_TLS_KEYFILE=str(mismatched))
    process = BridgeProcess(env, tls_dir)
    with pytest.raises(RuntimeError, match="exited with 1"):
        await asyncio.to_thread(process.start, tmp_path)
    lines = [json.loads(line) for line in process.log().splitlines() if line.startswith("{")]
    assert any(line["level"] == "error" and "cannot start: BRIDGE_TLS_CERTFILE/BRIDGE_TLS_KEYFILE" in line["message"]
               and "KEY_VALUES_MISMATCH" in line["message"] for line in lines), process.log_tail()


# ------------------------------------------------------------------------------------------ Kafka

async def test_kafka_tls_files_are_read_again_for_the_next_connection(kafka, tls_dir, second_tls, tmp_path, client):
    """The CA file first names the wrong CA (every handshake with the broker fails); once it is
    replaced, the next client the bridge makes connects, without a restart."""
    volume = SecretVolume(tmp_path / "kafka", {"ca.crt": (second_tls / "ca.pem").read_bytes()})
    env = bridge_env(kafka, "test.rotation.kafka", BRIDGE_KAFKA_SSL_CAFILE=str(volume.path("ca.crt")))
    process = BridgeProcess(env, tls_dir).start(tmp_path, ready=False)
    try:
        await asyncio.sleep(2)
        assert (await client.request("GET", process.management_url + "/readyz")).status == 503
        volume.update({"ca.crt": (tls_dir / "ca.pem").read_bytes()})
        started = time.monotonic()
        while (await client.request("GET", process.management_url + "/readyz")).status != 200:
            assert time.monotonic() - started < 15, f"not connected with the new CA file:\n{process.log_tail()}"
            await asyncio.sleep(0.2)
        body = orjson.dumps({"workNo": "1", "eventList": [{"eventType": "AgentState_Ready"}]})
        assert (await client.post(process.url, body, push_headers())).status == 200
        reloads = (await client.request("GET", process.management_url + "/metrics")).text
    finally:
        await process.astop()
    print(f"connected {time.monotonic() - started:.1f} s after the CA file changed")
    assert 'bridge_secret_reloads_total{result="ok",secret="kafka_tls"} 1.0' in reloads
