"""The eight drills on the local cluster (docs/kubernetes-local.md): 200 agents at the gateway's real
timings (a failed push sent again 10 s later, the agent signed out after 120 s of failures, 8 s to
answer) over a pool of 8 connections through the router Service, while one thing goes wrong:

a. Kafka scaled to 0 for 60 s, then to 1;
b. a bridge pod force-deleted (the StatefulSet creates it again at once);
c. `kubectl rollout restart` of the bridge StatefulSet;
d. the bridge scaled 3 -> 4 (the fourth pod answering pushes) -> 3;
e. a router pod deleted;
f. a bridge pod evicted through the Eviction API, a second eviction refused (429) meanwhile;
g. Kafka scaled to 0, the bridge pod with the most spooled pushes force-deleted, Kafka back 10 s
   later;
h. `kubectl rollout restart` of the bridge StatefulSet during a Kafka outage (Kafka back ~60 s
   after it went).

Each drill ends once every bridge pod delivered its spool; its records are read back in offset
order and compared with the gateway's ledger. Nothing may be lost and nobody signed out; c-f may
fail no push; a-h may have no agent out of order. The table of every drill is printed at the end.
"""
from __future__ import annotations

import asyncio
import json
import random
import re
import time

import pytest

from bench.simulate import Ledger

from .conftest import Cluster
from .drills import (
    AFTER_S,
    BRIDGES,
    ROUTER,
    Fault,
    Pod,
    Result,
    Row,
    kafka_scale,
    metric,
    pod,
    pods,
    replaced,
    ring,
    run_drill,
    spools,
    table,
    until,
)

pytestmark = pytest.mark.k8s
OUTAGE_S = 60.0
FIRST = random.randrange(1_000_000, 9_000_000, 10_000)  # agents of their own on every run


@pytest.fixture(scope="module")
def rows():
    collected: list[Row] = []
    yield collected
    if collected:
        print("\n\nThe drills (pushes answered \"0\"; failed attempts; events lost; agents out of order; agents "
              "signed out; the longest run of failures of one agent):\n" + table(collected), flush=True)


async def drill(cluster: Cluster, tmp_path, rows: list[Row], name: str, fault: Fault, *,
                planned: bool = False) -> Result:
    """`planned`: an operation Kubernetes performs on purpose, which may fail no push and never leaves
    the routers with fewer than all pods but one."""
    number = "abcdefgh".index(name)
    result = await run_drill(cluster, tmp_path / f"{name}.jsonl", name, FIRST + 1000 * number, fault)
    rows.append(result.row)
    row, figures = result.row, result.figures
    assert row.signed_out == 0, f"{name}: agents signed out"
    assert figures.lost == 0 and figures.events_found == figures.events_acked, figures.details()
    assert row.agents_out_of_order == 0, figures.details()
    if planned:
        assert not row.failed, f"{name}: pushes failed: {dict(result.failures)}"
        fewest = min((e.active for e in result.routers if e.active is not None), default=BRIDGES)
        assert fewest >= BRIDGES - 1, f"{name}: a router was down to {fewest} bridge pods"
    return result


def kubectl(cluster: Cluster, *args: str, timeout: float = 120) -> str:
    return cluster.kubectl(*args, timeout=timeout).stdout


async def run(cluster: Cluster, *args: str, timeout: float = 120) -> str:
    return await asyncio.to_thread(kubectl, cluster, *args, timeout=timeout)


def bridge(cluster: Cluster, ordinal: int) -> str:
    return f"{cluster.env['BRIDGE_STATEFULSET']}-{ordinal}"


async def force_delete(cluster: Cluster, name: str) -> float:
    """Deleted at once, as `kubectl delete --grace-period=0 --force` does; the seconds until the
    StatefulSet's new pod of that name is ready and in both routers' rings."""
    old = pod(cluster, name)
    assert old is not None and old.ready, f"{name} is not there to be deleted"
    await run(cluster, "delete", "pod", name, "--grace-period=0", "--force", "--wait=false")
    absent = await replaced(cluster, old)
    print(f"\n{name} force-deleted: created again, ready and routed after {absent:.1f} s", flush=True)
    return absent


async def rollout_restart(cluster: Cluster, timeout: float) -> None:
    workload = f"statefulset/{cluster.env['BRIDGE_STATEFULSET']}"
    began = time.monotonic()
    await run(cluster, "rollout", "restart", workload)
    await run(cluster, "rollout", "status", workload, f"--timeout={timeout:.0f}s", timeout=timeout + 20)
    print(f"\nrollout restart of {workload}: {time.monotonic() - began:.0f} s", flush=True)


def evict(cluster: Cluster, name: str) -> tuple[bool, str]:
    """An Eviction of pod `name` (policy/v1): (accepted, what the API server said)."""
    body = {"apiVersion": "policy/v1", "kind": "Eviction",
            "metadata": {"name": name, "namespace": cluster.env["NAMESPACE"]}}
    result = cluster.kubectl("create", "--raw", f"/api/v1/namespaces/{cluster.env['NAMESPACE']}/pods/{name}/eviction",
                             "-f", "-", check=False, input=json.dumps(body))
    return result.returncode == 0, (result.stdout + result.stderr).strip()


# -- the faults --------------------------------------------------------------------------------------

async def kafka_outage(cluster: Cluster, ledger: Ledger) -> None:
    await kafka_scale(cluster, 0)
    await asyncio.sleep(OUTAGE_S)
    held = await asyncio.to_thread(spools, cluster)
    assert sum(held.values()) > 0, f"Kafka has been away for {OUTAGE_S:g} s and nothing was spooled: {held}"
    await kafka_scale(cluster, 1)


async def pod_force_deleted(cluster: Cluster, ledger: Ledger) -> None:
    await force_delete(cluster, bridge(cluster, 1))


async def rolling_restart(cluster: Cluster, ledger: Ledger) -> None:
    await rollout_restart(cluster, 300)


async def three_four_three(cluster: Cluster, ledger: Ledger) -> None:
    statefulset = f"statefulset/{cluster.env['BRIDGE_STATEFULSET']}"
    fourth = bridge(cluster, BRIDGES)
    await run(cluster, "scale", statefulset, f"--replicas={BRIDGES + 1}")

    def answering() -> bool:
        new = pod(cluster, fourth)
        return (new is not None and new.ready and metric(new, 'bridge_pushes_total{retcode="0"}') > 0
                and all(f"bridge{BRIDGES}" in (ring(r) or ()) for r in pods(cluster, ROUTER)))
    await until(answering, 120, f"{fourth} ready, in both routers' rings and answering pushes")
    ledger.mark("scaled up")
    await asyncio.sleep(AFTER_S)
    await run(cluster, "scale", statefulset, f"--replicas={BRIDGES}")
    await until(lambda: pod(cluster, fourth) is None, 120, f"{fourth} gone")


def sessions(router: Pod) -> float:
    return metric(router, 'haproxy_frontend_current_sessions{proxy="push"}')


async def router_deleted(cluster: Cluster, ledger: Ledger) -> None:
    """The router pod that holds the most of the gateway's connections."""
    routers = await asyncio.to_thread(pods, cluster, ROUTER)
    held = {router.name: await asyncio.to_thread(sessions, router) for router in routers}
    victim = max(routers, key=lambda r: held[r.name])
    assert held[victim.name] > 0, f"no router holds a connection of the gateway: {held}"
    print(f"\nthe gateway's connections on the routers: {held}", flush=True)
    began = time.monotonic()
    await run(cluster, "delete", "pod", victim.name, "--wait=false")

    def replaced() -> bool:
        routers = pods(cluster, ROUTER)
        return victim.name not in {r.name for r in routers} and len(routers) == 2 and all(r.ready for r in routers)
    await until(replaced, 120, f"{victim.name} gone and two routers ready")
    print(f"\nrouter {victim.name} deleted: gone, two routers ready after {time.monotonic() - began:.0f} s", flush=True)


async def evicted(cluster: Cluster, ledger: Ledger) -> None:
    victim, other = bridge(cluster, 1), bridge(cluster, 2)
    old = pod(cluster, victim)
    assert old is not None
    accepted, said = await asyncio.to_thread(evict, cluster, victim)
    assert accepted, f"eviction of {victim} refused: {said}"
    accepted, said = await asyncio.to_thread(evict, cluster, other)
    assert not accepted and "disruption budget" in said and ("429" in said or "TooManyRequests" in said), \
        f"a second eviction ({other}) while {victim} is not back: {said}"
    print(f"\n{victim} evicted; evicting {other} meanwhile was refused: {said}", flush=True)
    await replaced(cluster, old)


async def outage_and_loss(cluster: Cluster, ledger: Ledger) -> None:
    await kafka_scale(cluster, 0)

    def busiest() -> str | None:
        held = spools(cluster)
        name = max(held, key=lambda b: held[b])
        return name if held[name] >= 100 else None
    victim = await until(busiest, 60, "a bridge pod holding 100 spooled pushes")
    print(f"\nspooled when {victim} was force-deleted: {await asyncio.to_thread(spools, cluster)}", flush=True)
    old = pod(cluster, victim)
    assert old is not None
    await run(cluster, "delete", "pod", victim, "--grace-period=0", "--force", "--wait=false")
    ledger.mark("force-deleted")
    back = asyncio.create_task(replaced(cluster, old))
    await asyncio.sleep(10)
    await kafka_scale(cluster, 1)
    print(f"{victim}: created again, ready and routed {await back:.1f} s after its deletion", flush=True)


async def rolling_restart_in_an_outage(cluster: Cluster, ledger: Ledger) -> None:
    await kafka_scale(cluster, 0)
    away = time.monotonic()
    await until(lambda: sum(spools(cluster).values()) >= 100, 60, "100 pushes spooled")
    restart = asyncio.create_task(rollout_restart(cluster, 900))
    await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - away)))
    await kafka_scale(cluster, 1)
    ledger.mark("kafka back")
    await restart


# -- the drills --------------------------------------------------------------------------------------

async def test_a_kafka_down_for_60s(cluster, tmp_path, rows):
    await drill(cluster, tmp_path, rows, "a", kafka_outage)


async def test_b_bridge_pod_force_deleted(cluster, tmp_path, rows):
    await drill(cluster, tmp_path, rows, "b", pod_force_deleted)


async def test_c_rollout_restart_fails_no_push(cluster, tmp_path, rows):
    await drill(cluster, tmp_path, rows, "c", rolling_restart, planned=True)


async def test_d_scale_3_to_4_to_3_fails_no_push(cluster, tmp_path, rows):
    await drill(cluster, tmp_path, rows, "d", three_four_three, planned=True)


async def test_e_router_pod_deleted_fails_no_push(cluster, tmp_path, rows):
    await drill(cluster, tmp_path, rows, "e", router_deleted, planned=True)


async def test_f_eviction_honours_the_budget_and_fails_no_push(cluster, tmp_path, rows):
    await drill(cluster, tmp_path, rows, "f", evicted, planned=True)


async def test_g_kafka_down_and_the_busiest_pod_force_deleted(cluster, tmp_path, rows):
    """The pod is back with its claim within seconds: the routers keep its agents for it meanwhile
    (their pushes fail), so none of their newer pushes overtakes the older ones in its spool."""
    result: Result = await drill(cluster, tmp_path, rows, "g", outage_and_loss)
    left = [e for e in result.routers if re.search(r" is DOWN| is stopping|maintenance", e.text)]
    assert not left, f"a router took a bridge pod out: {left}"


async def test_h_rollout_restart_during_a_kafka_outage(cluster, tmp_path, rows):
    await drill(cluster, tmp_path, rows, "h", rolling_restart_in_an_outage)
