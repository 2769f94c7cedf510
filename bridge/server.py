"""One bridge process put together, on one event loop (uvloop): the outage spool, the secrets read
from files, the Kafka side (credentials, supervisor, publisher), delivery, and the two servers.

The push endpoint (HTTPS, TLS 1.2 minimum) and the management endpoints (/healthz, /readyz,
/metrics; plain HTTP on their own port) listen as bridge/listener.py sets them up. On SIGTERM or
SIGINT the replica first tells the other replicas sharing its spool volume that it leaves
(bridge/spool/neighbours.py), then the push server stops accepting, readiness turns false,
in-flight pushes finish within BRIDGE_SHUTDOWN_TIMEOUT_S, the spool is delivered for up to
BRIDGE_EXIT_DRAIN_TIMEOUT_S while Kafka is usable, the producer flushes, and `run` returns.
"""
from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable

from . import config, tls
from .app import create_app, create_management_app
from .auth import Authenticator
from .delivery import Delivery
from .kafka.credentials import Credentials
from .kafka.patch import give_aiokafka_the_loop
from .listener import Server, management_config, push_config
from .membership import Membership
from .metrics import Metrics
from .publisher import Publisher
from .risk import AgentRisk
from .spool import OwnSlot, SpoolError
from .supervisor import Supervisor
from .watch import SecretError, Watcher, watch_bridge_files

log = logging.getLogger("bridge")


def open_spool(settings: config.Settings, metrics: Metrics) -> tuple[OwnSlot | None, str]:
    """The recovered outage spool, or None and why. A spool that cannot be opened does not stop the
    bridge (pushes still go to Kafka while it is usable); readiness and metrics show the problem.
    Damaged entries and failed or stalled writes are counted in `metrics`, from recovery on."""
    if settings.spool_dir is None:
        log.warning("BRIDGE_SPOOL_DIR is not set: while Kafka cannot take pushes they are refused with 503, and "
                    "an outage longer than 2 minutes gets agents signed out by the gateway")
        return None, ""
    try:
        spool = OwnSlot.open(settings.spool_dir, settings.spool_max_bytes, on_damage=metrics.spool_corrupt.inc,
                             join_window_s=settings.join_window_s, append_deadline_s=settings.spool_append_timeout_s,
                             on_disk_failure=lambda kind: metrics.spool_disk_failures.labels(kind).inc())
    except SpoolError as exc:
        log.error("outage spool unavailable: %s; pushes are refused with 503 whenever Kafka cannot take them", exc)
        return None, str(exc)
    log.info("outage spool in %s (limit %d bytes)", spool.directory, settings.spool_max_bytes)
    return spool, ""


async def run(settings: config.Settings, make_publisher: Callable[..., Publisher] = Publisher) -> bool:
    """Serve until SIGTERM/SIGINT. `make_publisher(settings, metrics, keeper)` is replaceable so the
    benchmark can run this very stack without Kafka. The spool is recovered before anything else."""
    give_aiokafka_the_loop(asyncio.get_running_loop())
    metrics = Metrics()
    spool, spool_problem = open_spool(settings, metrics)
    risk = AgentRisk()
    metrics.watch_risk(risk)
    # Secrets and certificates from files, read again whenever they change (bridge/watch.py).
    auth = Authenticator(settings.service_tokens, settings.allow_no_token)
    certificate = None
    if not settings.insecure_http:
        assert settings.tls_certfile is not None and settings.tls_keyfile is not None  # checked by config
        certificate = tls.Certificate(settings.tls_certfile, settings.tls_keyfile)
    credentials = Credentials(settings)
    files = Watcher(metrics)
    try:
        watch_bridge_files(files, settings, auth, certificate, credentials)
    except SecretError as exc:
        log.error("cannot start: %s", exc)
        return False
    publisher = make_publisher(settings, metrics, Supervisor(settings, metrics, credentials))
    delivery = Delivery(publisher, spool, metrics, spool_problem)
    membership = Membership(delivery, settings.leave_grace_s, settings.router_probe_loss_s,
                            spool_wait_s=settings.leave_spool_wait_s)
    push = Server(push_config(settings, create_app(settings, delivery, membership, metrics, risk, auth), certificate),
                  owns_signals=True, before_shutdown=membership.depart)
    management = Server(management_config(settings, create_management_app(
        delivery, membership, metrics, files.describe)), owns_signals=False)
    metrics.watch_connections(push.config.connections, management.config.connections)
    management_task = asyncio.create_task(management.serve(), name="management-server")
    watch_task = asyncio.create_task(files.run(), name="secret-files")
    # What exists now (modules, settings, the apps) lives as long as the process: keep it out of
    # the collector's way, and collect the young generation less often, since a push allocates a
    # few hundred short-lived containers that reference counting frees anyway.
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)
    try:
        await push.serve()
    finally:
        watch_task.cancel()
        management.should_exit = True
        await management_task
        await asyncio.gather(watch_task, return_exceptions=True)
    return push.started


