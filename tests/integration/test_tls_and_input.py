"""TLS versions on the push port, and liberal acceptance of what gateways really send."""
from __future__ import annotations

import socket
import ssl
import threading

import orjson
import pytest
from conftest import headers_of, push_headers, read_topics

from tests.support import BridgeProcess

pytestmark = [pytest.mark.integration,
              pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")]


def handshake(port: int, cafile: str, version: ssl.TLSVersion) -> str:
    """Complete a TLS handshake pinned to one protocol version; return the negotiated version."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile)
    context.minimum_version = context.maximum_version = version
    if version < ssl.TLSVersion.TLSv1_2:
        context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client really offer the old protocol
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        return tls.version()


def test_tls_1_1_is_refused_and_1_2_and_1_3_succeed(bridge, tls_dir):
    cafile = str(tls_dir / "ca.pem")
    assert handshake(bridge.port, cafile, ssl.TLSVersion.TLSv1_2) == "TLSv1.2"
    assert handshake(bridge.port, cafile, ssl.TLSVersion.TLSv1_3) == "TLSv1.3"
    # The handshake fails: with a protocol-version alert, or (asyncio's TLS transport closes
    # without flushing the alert) with an EOF during the handshake. Either way no TLS 1.1 session.
    with pytest.raises(ssl.SSLError) as refused:
        handshake(bridge.port, cafile, ssl.TLSVersion.TLSv1_1)
    reason = str(refused.value).upper()
    assert "VERSION" in reason or "UNEXPECTED_EOF" in reason, refused.value


def test_tls_1_1_client_is_able_to_connect_to_a_permissive_server(tls_dir):
    """Control for the test above: the TLS 1.1 client works, so its refusal is the bridge's doing."""
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(tls_dir / "server.pem", tls_dir / "server.key")
    server_context.minimum_version = ssl.TLSVersion.TLSv1
    server_context.set_ciphers("DEFAULT:@SECLEVEL=0")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve_one() -> None:
        conn, _ = listener.accept()
        try:
            with server_context.wrap_socket(conn, server_side=True):
                pass
        except (ssl.SSLError, OSError):
            pass

    thread = threading.Thread(target=serve_one, daemon=True)
    thread.start()
    try:
        try:
            assert handshake(port, str(tls_dir / "ca.pem"), ssl.TLSVersion.TLSv1_1) == "TLSv1.1"
        except ssl.SSLError as exc:
            pytest.skip(f"this OpenSSL build cannot speak TLS 1.1 at all ({exc}); the refusal test proves less")
    finally:
        thread.join(5)
        listener.close()


async def test_liberal_input_is_accepted_and_preserved(client, bridge, kafka, topic):
    events = [
        {"eventType": "AgentState_SetNotReady_Success", "workNo": 30001, "content": {"reason": "200"}},
        {"eventType": "AgentEvent_Call_Release", "workNo": "30001", "content": "1456403549-15"},
        {"eventType": "AgentState_Ready", "workNo": "30001", "content": None},
        {"eventType": "AgentMediaEvent_Record", "content": {"taskId": 123456789012, "fileMediaType": 2,
                                                           "nested": {"list": [1, "2", None, 3.25]}}},
        {"eventType": "Vendor_Brand_New_Event", "workNo": "", "content": [1, 2, 3], "eventGenTime": 1795480000123,
         "someFutureField": {"x": "y"}},
        {"eventType": "AgentOther_ShutdownService", "content": {"loginTime": "1471585949806"}, "名字": "座席"},
    ]
    body = {"workNo": 30001, "eventList": events, "extraTopLevel": "kept out of records, not refused"}
    response = await client.post(bridge.url, orjson.dumps(body), headers=push_headers())
    assert response.status == 200, response.text

    records = [r for r in await read_topics(kafka, [topic]) if r.key == b"30001"]
    assert [orjson.loads(r.value) for r in records] == events, "every field kept, values unchanged"
    assert {headers_of(r)["ce_subject"] for r in records} == {"30001"}
    assert headers_of(records[4])["ce_type"] == "Vendor_Brand_New_Event"


async def test_routing_rules_send_event_families_to_their_topics(kafka, tls_dir, tmp_path, client):
    from conftest import bridge_env
    env = bridge_env(kafka, "test.routed.default",
                     BRIDGE_ROUTES="AgentChat_*=test.routed.chat, AgentMediaEvent_*=test.routed.media")
    process = BridgeProcess(env, tls_dir).start(tmp_path)
    try:
        body = {"workNo": "40001", "eventList": [
            {"eventType": "AgentChat_Ring", "content": None},
            {"eventType": "AgentState_Ready", "content": None},
            {"eventType": "AgentMediaEvent_Record", "content": {"taskId": 1}},
            {"eventType": "AgentChat_Disconnected", "content": None},
        ]}
        response = await client.post(process.url, orjson.dumps(body), headers=push_headers())
        assert response.status == 200, response.text
        topics = {}
        for name in ("test.routed.default", "test.routed.chat", "test.routed.media"):
            topics[name] = [headers_of(r)["ce_type"] for r in await read_topics(kafka, [name])]
        assert topics == {
            "test.routed.default": ["AgentState_Ready"],
            "test.routed.chat": ["AgentChat_Ring", "AgentChat_Disconnected"],
            "test.routed.media": ["AgentMediaEvent_Record"],
        }
    finally:
        await process.astop()
