"""The shipped router reloaded under load: its configuration (SIGUSR2 to the master, what
`docker compose kill -s SIGUSR2 router` does) and its certificate (new files in its TLS directory,
which it picks up by itself, as after `docker compose run --rm bridge-tls` or a renewed Secret).

The router runs as shipped, in master-worker mode with its certificate watcher (deploy/compose/
router.cfg, localised as in test_router.py), in front of three real bridges, while 40 agents push
over 4 shared keep-alive connections, as the gateway's pooled client does. No push may fail or be
tried again, and every agent's events reach Kafka in the order they were sent.
"""
from __future__ import annotations

import asyncio
import re
import socket
import ssl
import time
import urllib.request
from collections import defaultdict

import aiohttp
import orjson
import pytest
import test_router
from conftest import client_context, read_topics
from test_router import agent_loop, agents, logged

from tests.support import Router, certificate_for

pytestmark = [pytest.mark.integration,
              pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")]

CONNECTIONS = 4
# test_router's module-scoped fixtures: three bridges and their topic, a set of their own here.
topic, replicas = test_router.topic, test_router.replicas


@pytest.fixture
def router(replicas, tls_dir, tmp_path) -> Router:
    process = Router(replicas, tls_dir, tmp_path, master_worker=True)
    try:
        yield process.start()
    finally:
        process.stop()


def served_certificate(port: int) -> bytes:
    """The certificate the router presents now (DER), on a new connection."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        return tls.getpeercert(binary_form=True)


def healthz(router: Router) -> str:
    with urllib.request.urlopen(router.management_url + "/healthz", timeout=5) as response:
        return response.read().decode()


async def until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(check):
        if time.monotonic() > deadline:
            raise AssertionError(f"not seen within {timeout:.0f} s: {what}")
        await asyncio.sleep(0.2)


def reloads(router: Router) -> int:
    """How many workers the master has started since it began (its "Loading success." lines)."""
    return router.log().count("Loading success")


async def test_a_configuration_and_a_certificate_reloaded_under_load_fail_no_push(
        router, replicas, kafka, topic, tls_dir, tmp_path):
    work_nos, phase = agents(570001, 40), "reload"
    connector = aiohttp.TCPConnector(ssl=client_context(tls_dir), limit=CONNECTIONS)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30),
                                     skip_auto_headers=["Content-Type"]) as pooled:
        stop, failures = asyncio.Event(), []
        load = [asyncio.create_task(agent_loop(pooled, router.url, w, phase, stop, failures)) for w in work_nos]
        await asyncio.sleep(2)
        before = len(router.requests())
        started = reloads(router)

        # A new configuration: the management port's /healthz says so once the new worker runs.
        assert healthz(router) == "ok"
        path = router.config_path
        path.write_text(re.sub(r'string "ok" if \{ path /healthz \}', 'string "ok, reloaded" if { path /healthz }',
                               path.read_text(), count=1))
        router.reload()
        await until(lambda: healthz(router) == "ok, reloaded", 15, "the new configuration in use")
        await asyncio.sleep(3)

        # A new certificate (same CA, same name) written into the router's TLS directory: the
        # watcher reloads the router by itself, and new connections get the new certificate.
        old = served_certificate(router.port)
        renewed = certificate_for(tls_dir, "localhost", tmp_path / "renewed", also=",IP:127.0.0.1")
        router.install_tls(renewed)
        new = (renewed / "server.pem").read_text()
        await until(lambda: ssl.DER_cert_to_PEM_cert(served_certificate(router.port)).strip() == new.strip(), 30,
                    "the renewed certificate served")
        assert served_certificate(router.port) != old
        await asyncio.sleep(3)
        stop.set()
        sent = dict(zip(work_nos, await asyncio.gather(*load), strict=True))

    assert reloads(router) - started == 2, router.log()[-2000:]
    assert failures == [], f"{len(failures)} pushes failed, e.g. {failures[:5]}"
    ours = set(work_nos)
    lines = await logged(router, lambda r: r.key in ours, sum(sent.values()))
    assert len(lines) == sum(sent.values()), "one log line per push (the harness logs every push)"
    during = router.requests()[before:]
    tried_again = [r for r in during if r.retries != "0" or r.status != 200]
    assert not tried_again, f"the router met a closed port or no answer {len(tried_again)} times: {tried_again[:3]}"
    # Order per agent across both reloads, read back from Kafka.
    seen: dict[str, list[int]] = defaultdict(list)
    for record in await read_topics(kafka, [topic]):
        content = orjson.loads(record.value).get("content")
        if isinstance(content, dict) and content.get("phase") == phase:
            seen[record.key.decode()].append(content["seq"])
    for work_no in work_nos:
        assert list(dict.fromkeys(seen[work_no])) == list(range(sent[work_no])), f"agent {work_no}: {seen[work_no][:20]}"


def test_the_watcher_leaves_an_unchanged_certificate_alone(router, tmp_path):
    """Writing the same files again (a copy service that runs with nothing new) starts no worker."""
    started = reloads(router)
    router.install_tls(router.tls)
    time.sleep(12)  # two looks of the watcher, 5 s apart, and some
    assert reloads(router) == started


async def test_a_certificate_that_does_not_load_leaves_the_old_one_serving(router, tls_dir, tmp_path):
    """A renewed certificate written before its key (a key that does not match for a while): the
    reload fails, the old worker keeps serving the old certificate, and once the key is there too
    the watcher reloads again and the new pair is served."""
    old = served_certificate(router.port)
    renewed = certificate_for(tls_dir, "localhost", tmp_path / "renewed", also=",IP:127.0.0.1")
    (router.tls_dir / "router.pem").write_bytes((renewed / "server.pem").read_bytes())
    await until(lambda: "Loading failure" in router.log(), 30, "the reload refused")
    assert served_certificate(router.port) == old
    (router.tls_dir / "router.pem.key").write_bytes((renewed / "server.key").read_bytes())
    new = ssl.PEM_cert_to_DER_cert((renewed / "server.pem").read_text())
    await until(lambda: served_certificate(router.port) == new, 30, "the renewed pair served")
