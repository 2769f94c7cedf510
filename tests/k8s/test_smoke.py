"""The smallest end-to-end check of the local cluster: a few agents push through the router
Service's URL from the machine (TLS ends at a router pod, starts again to a bridge pod), every push
is answered "0", and every event is read back from the in-cluster Kafka in each agent's order,
each agent's records written by one bridge pod of the StatefulSet."""
from __future__ import annotations

import random
import re
from collections import defaultdict

import pytest

from bench.simulate import Ledger, SimSettings, Simulator
from bench.verify import compare, read_committed, seen

pytestmark = pytest.mark.k8s
TOPIC = "cc.agent.events"


async def test_pushes_through_the_router_reach_kafka_in_order(cluster):
    env = cluster.env
    ledger = Ledger()
    # Agent numbers of their own, so that records of earlier runs on the same cluster never mix in.
    first = random.randrange(200_000, 900_000, 100)
    settings = SimSettings(url=env["PUSH_URL"], cafile=env["CA_FILE"], token=env["SERVICE_TOKEN"], agents=12,
                           duration_s=60.0, max_pushes=60, think_s=(0.1, 0.4), retry_interval_s=1.0,
                           timeout_s=10.0, signout_after_s=60.0, drain_s=20.0, first_work_no=first)
    summary = await Simulator(settings, ledger).run()
    failures = list(ledger.of_kind("fail"))
    assert not failures, f"failed pushes through {env['PUSH_URL']}: {failures[:5]}"
    assert summary.pushes_acked >= 60

    records = await read_committed(cluster.kafka_options(), [TOPIC], 120)
    ours = [r for r in records if r.key is not None and first <= int(r.key) < first + settings.agents]
    figures = compare(ledger, [seen(r) for r in ours])
    print(f"\nsmoke check: {figures.line()}")
    assert figures.lost == 0 and figures.order_violations == 0 and figures.events_found == figures.events_acked, \
        figures.line()

    replicas = defaultdict(set)
    for record in ours:
        headers = {k: v.decode() for k, v in record.headers}
        replicas[record.key.decode()].add(headers.get("bridge_replica", ""))
    pods = set().union(*replicas.values())
    assert all(re.fullmatch(rf"{env['BRIDGE_STATEFULSET']}-\d+", pod) for pod in pods), pods
    assert all(len(names) == 1 for names in replicas.values()), f"an agent's records came from several pods: {replicas}"
    print(f"smoke check: {len(replicas)} agents over the pods {sorted(pods)}, each agent on one pod")
