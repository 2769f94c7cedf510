"""The alerting rules (deploy/monitoring/alerts.yml): valid for Prometheus, unit-tested rule by
rule, and the same as the PrometheusRule of the Kubernetes component."""
from __future__ import annotations

import os
import sysconfig
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from .conftest import MONITORING, ROOT, run

RULES = MONITORING / "alerts.yml"
UNIT_TESTS = Path(__file__).with_name("alerts.test.yml")
COMPONENT = ROOT / "deploy" / "kubernetes" / "components" / "prometheus-rules"
SEVERITIES = {"critical", "warning"}


@pytest.fixture(scope="module")
def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def test_promtool_accepts_the_rules(promtool):
    result = run(promtool, "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass(promtool):
    result = run(promtool, "test", "rules", str(UNIT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_quiet_case(rules):
    cases = defaultdict(set)
    for group in yaml.safe_load(UNIT_TESTS.read_text())["tests"]:
        for case in group.get("alert_rule_test", []):
            cases[case["alertname"]].add("firing" if case.get("exp_alerts") else "quiet")
    for rule in rules:
        assert cases[rule["alert"]] == {"firing", "quiet"}, \
            f"{rule['alert']}: unit tests cover only {sorted(cases[rule['alert']]) or 'nothing'}"
    assert set(cases) <= {rule["alert"] for rule in rules}, "unit tests of alerts that do not exist"


def test_alerts_are_named_once_and_say_what_happened(rules):
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), "an alert name is used twice"
    for rule in rules:
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        assert rule["annotations"].get("summary") and rule["annotations"].get("description"), rule["alert"]


def test_prometheus_rule_object_holds_the_same_rules(tmp_path):
    """The component's PrometheusRule has exactly alerts.yml's groups, and kustomize renders it with
    the base (an overlay only has to list the component)."""
    component = yaml.safe_load((COMPONENT / "prometheusrule.yaml").read_text())
    assert (component["apiVersion"], component["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert component["spec"] == yaml.safe_load(RULES.read_text()), \
        "deploy/kubernetes/components/prometheus-rules/prometheusrule.yaml differs from deploy/monitoring/alerts.yml"
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    up = Path(os.path.relpath(ROOT, overlay))
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "resources": [str(up / "deploy/kubernetes/base")],
        "components": [str(up / COMPONENT.relative_to(ROOT))]}))
    result = run(str(Path(sysconfig.get_path("scripts")) / "kubectl"), "kustomize", str(overlay))
    assert result.returncode == 0, result.stderr
    rendered = [doc for doc in yaml.safe_load_all(result.stdout) if doc and doc["kind"] == "PrometheusRule"]
    assert len(rendered) == 1 and rendered[0]["spec"] == component["spec"]
