"""Start-up behaviour of the real process: settings are checked before any port opens."""
from __future__ import annotations

import os
import subprocess
import sys

import orjson
import pytest
from conftest import bridge_env, push_headers

from tests.support import ROOT, BridgeProcess

pytestmark = pytest.mark.integration


def run_serve(env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    return subprocess.run([sys.executable, "-m", "bridge", "serve"], env={**clean, **env}, cwd=ROOT,
                          capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("env, variable", [
    ({"BRIDGE_PORT": "http"}, "BRIDGE_PORT"),
    ({"BRIDGE_SERVICE_TOKENS": ""}, "BRIDGE_SERVICE_TOKENS"),
    ({"BRIDGE_TLS_CERTFILE": "/nonexistent.pem"}, "BRIDGE_TLS_CERTFILE"),
])
def test_invalid_setting_stops_the_process_naming_the_variable(kafka, tls_dir, env, variable):
    base = {**bridge_env(kafka, "unused"), "BRIDGE_TLS_CERTFILE": str(tls_dir / "server.pem"),
            "BRIDGE_TLS_KEYFILE": str(tls_dir / "server.key")}
    result = run_serve({**base, **env})
    assert result.returncode == 2
    assert f"configuration error: {variable}" in result.stderr
    assert "Traceback" not in result.stderr


async def test_tokenless_mode_is_loud_and_accepts_pushes(kafka, tls_dir, tmp_path, client):
    env = bridge_env(kafka, "test.tokenless", BRIDGE_SERVICE_TOKENS="", BRIDGE_ALLOW_NO_TOKEN="true")
    process = BridgeProcess(env, tls_dir).start(tmp_path)
    try:
        body = orjson.dumps({"workNo": "1", "eventList": [{"eventType": "AgentState_Ready", "content": None}]})
        response = await client.post(process.url, body, headers=push_headers(service_token=None))
        assert response.status == 200, response.text
        assert "SECURITY" in process.log() and "ANY client" in process.log()
    finally:
        await process.astop()


async def test_plain_http_only_when_asked(kafka, tmp_path, client):
    process = BridgeProcess(bridge_env(kafka, "test.plain", BRIDGE_INSECURE_HTTP="true"), tls=None).start(tmp_path)
    try:
        body = orjson.dumps({"workNo": "1", "eventList": [{"eventType": "AgentState_Ready"}]})
        response = await client.post(process.url, body, headers=push_headers())
        assert response.status == 200, response.text
        assert "plain HTTP" in process.log()
    finally:
        await process.astop()
