"""The compose project's router reloaded under a gateway's load, with the documented commands:
`docker compose kill -s SIGUSR2 router` (a changed router.cfg), and `docker compose run --rm bridge-tls`
after a renewed certificate was put in .local/tls, which the router then picks up by itself, as the
replicas do. 50 agents push over the simulated gateway's pool of keep-alive connections meanwhile:
no push may fail, nothing acknowledged may be lost, and every agent's events stay in order.
"""
from __future__ import annotations

import asyncio
import shutil
import socket
import ssl

import pytest

from bench.simulate import Ledger
from tests.support import ROUTER_LINE, certificate_for

from .gateway import gateway, read_back, until
from .stack import REPLICAS, Stack

pytestmark = pytest.mark.container


def loads(stack: Stack) -> int:
    """Workers the router's master has started so far (its "Loading success." notices)."""
    return stack.engine.podman("logs", stack.container("router")).stderr.count("Loading success")


def served(stack: Stack) -> bytes:
    """The certificate (DER) the router presents on a new connection to its published port."""
    context = ssl.create_default_context(cafile=str(stack.tls / "ca.pem"))
    with socket.create_connection(("127.0.0.1", stack.push_port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        return tls.getpeercert(binary_form=True)


async def test_a_reload_and_a_renewed_certificate_fail_no_push(stack: Stack, tmp_path):
    await asyncio.to_thread(stack.wait_ready, REPLICAS, 120)
    ledger = Ledger(tmp_path / "reload.jsonl")
    sim = gateway(stack, ledger, first_work_no=350001, agents=50, duration_s=300.0)
    run = asyncio.create_task(sim.run())
    try:
        await until(lambda: sim.pushes_acked >= 100, 60, "100 pushes answered")
        started = await asyncio.to_thread(loads, stack)
        ledger.mark("reload")
        await asyncio.to_thread(stack.engine.compose, stack.project, "kill", "-s", "SIGUSR2", "router")
        await until(lambda: loads(stack) == started + 1, 30, "a new worker after SIGUSR2")
        await asyncio.sleep(5)

        ledger.mark("certificate")
        renewed = certificate_for(stack.tls, "localhost", tmp_path / "renewed", also=",IP:127.0.0.1")
        for name in ("server.pem", "server.key"):
            shutil.copy(renewed / name, stack.tls / name)
        await asyncio.to_thread(stack.engine.compose, stack.project, "run", "--rm", "bridge-tls")
        wanted = ssl.PEM_cert_to_DER_cert((renewed / "server.pem").read_text())
        await until(lambda: served(stack) == wanted, 60, "the router serving the renewed certificate")
        assert loads(stack) == started + 2, "one reload for the certificate"
        await asyncio.sleep(5)
        ledger.mark("restored")
    finally:
        sim.stop()
        summary = await run
        ledger.close()
    figures = await read_back(stack, ledger)
    print(f"\nrouter reloads: {summary.line()}\nrouter reloads: {figures.line()}", flush=True)
    assert sum(summary.failures.values()) == 0, summary.line()
    assert summary.signed_out == summary.abandoned == summary.events_unsent == 0, summary.line()
    assert figures.lost == 0 and figures.events_found == figures.events_acked, figures.details()
    assert figures.order_violations == 0 and figures.agents_out_of_order == 0, figures.details()
    since = ledger.entries[0]["t"]
    odd = [text for at, text in stack.router_log() if at >= since and (m := ROUTER_LINE.match(text)) and
           (m["status"] != "200" or m["retries"] != "0")]
    assert not odd, f"the router logged pushes that were not a plain success: {odd[:5]}"
