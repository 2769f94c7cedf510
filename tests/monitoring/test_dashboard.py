"""The Grafana dashboard (deploy/monitoring/grafana-dashboard.json): every query parses as PromQL,
every metric it (and every alerting rule) reads is one a running bridge exports, and it shows
what an operator needs to see."""
from __future__ import annotations

import json
import re

import pytest
import yaml
from conftest import push_headers

from .conftest import MONITORING, run

pytestmark = pytest.mark.integration

DASHBOARD = MONITORING / "grafana-dashboard.json"
# What the dashboard must show: pushes and events by outcome, latency, in-flight, Kafka, the
# spool's depth and age, agents at risk, dead letters and quarantined pushes.
REQUIRED = {
    "bridge_pushes_total", "bridge_pushes_rejected_total", "bridge_events_published_total",
    "bridge_push_duration_seconds_bucket", "bridge_inflight_pushes", "bridge_kafka_connected",
    "bridge_spool_entries", "bridge_spool_oldest_age_seconds", "bridge_agents_failing",
    "bridge_dead_letters_total", "bridge_quarantined_pushes_total",
}
GRAFANA_INTERVALS = re.compile(r"\$(__rate_interval|__interval|__range)\b")
GRAFANA_VARIABLES = re.compile(r"\$\{?(\w+)\}?")
NAME = re.compile(r"\b(bridge_\w+)")

PUSH = json.dumps({"workNo": "71001", "eventList": [
    {"eventType": "AgentState_Ready", "workNo": "71001", "content": None, "eventGenTime": 1795480000000}]}).encode()


def queries() -> list[str]:
    found = []

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                found.append(node["expr"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(DASHBOARD.read_text())["panels"])
    return found


def promql(query: str) -> str:
    """A Grafana query as Prometheus sees it: interval macros as 5m, variables as `.*`."""
    return GRAFANA_VARIABLES.sub(".*", GRAFANA_INTERVALS.sub("5m", query))


def metric_names(expressions: list[str]) -> set[str]:
    return {name for expr in expressions for name in NAME.findall(expr)}


def test_every_query_parses(promtool, tmp_path):
    """Each query becomes a recording rule in a scratch rules file, which promtool parses."""
    exprs = queries()
    assert len(exprs) >= 15
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{n}", "expr": promql(e)} for n, e in enumerate(exprs)]}]}
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules))
    result = run(promtool, "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_shows_what_matters():
    missing = REQUIRED - metric_names(queries())
    assert not missing, f"the dashboard does not show {sorted(missing)}"
    variables = {v["name"] for v in json.loads(DASHBOARD.read_text())["templating"]["list"]}
    used = {m for q in queries() for m in GRAFANA_VARIABLES.findall(q)} - {"__rate_interval", "__interval", "__range"}
    assert used <= variables, f"queries use undefined variables: {used - variables}"


async def test_every_metric_read_is_exported_by_a_running_bridge(bridge, client):
    """A real bridge, after an accepted and a refused push, exports every metric the dashboard
    and the alerting rules read (kube-state-metrics' series aside)."""
    assert (await client.post(bridge.url, PUSH, push_headers())).status == 200
    assert (await client.post(bridge.url, PUSH, push_headers(service_token="wrong-token"))).status == 403
    exposition = (await client.request("GET", bridge.management_url + "/metrics")).text
    exported = {line.split("{")[0].split(" ")[0] for line in exposition.splitlines() if line and line[0] != "#"}
    alerts = [rule["expr"] for group in yaml.safe_load((MONITORING / "alerts.yml").read_text())["groups"]
              for rule in group["rules"]]
    read = metric_names(queries() + alerts)
    missing = read - exported
    assert not missing, f"read by the dashboard or the alerts but not exported by the bridge: {sorted(missing)}"
