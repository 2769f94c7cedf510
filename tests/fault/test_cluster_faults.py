"""Fault drills on a three-node cluster (replication factor 3, min.insync.replicas 2), short form:
kill -9 a partition leader, kill -9 the active controller, a rolling restart, and the loss of two
nodes (no quorum, no min ISR), each under the load of 30 simulated agents retrying every second.

The bridge runs with its outage spool, as deployed. What every scenario must show: no event
answered "0" is missing from Kafka, no agent's events are out of order, and no agent sees a failed
push at all, not even while two nodes of three are gone (the spool keeps the pushes until the
cluster is whole again).

About 2.5 minutes in all on two shared cores (cluster start about 8 s; rolling restart about 50 s).
The long form is `python -m bench.faults --scenarios cluster`.
"""
from __future__ import annotations

import pytest

from bench.faults import CLUSTER_SCENARIOS, DrillSettings, run_drill

from .test_faults import EXTRA_ENV

pytestmark = pytest.mark.fault

SHORT = DrillSettings(agents=30, duration_s=14.0, fault_at=0.3, after_s=6.0, retry_interval_s=1.0, timeout_s=8.0,
                      drain_s=30.0, node_down_s=5.0, outage_s=8.0, partitions=12, bridge_env=EXTRA_ENV)


@pytest.mark.parametrize("scenario", CLUSTER_SCENARIOS)
async def test_cluster_faults(scenario, kafka_cluster, tls_dir, tmp_path):
    result = await run_drill(scenario, kafka_cluster, tls_dir, tmp_path, SHORT)
    print(result.line())
    figures = result.figures
    assert figures.lost == 0 and figures.order_violations == 0, f"{result.line()}\n{figures.details()}"
    assert figures.pushes_acked > 0 and figures.recovery_s is not None, (
        f"no push was acknowledged after the fault ended: {result.line()}")
    assert sorted(kafka_cluster.running()) == kafka_cluster.nodes, "every node must be back"
    assert figures.agents_failed == 0 and result.ok, f"agents noticed the {scenario}: {result.line()}"
    assert result.not_ready_s == 0, f"/readyz said 503 while pushes could be kept: {result.line()}"
