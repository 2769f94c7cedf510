"""The local Kubernetes cluster of deploy/k8s-local, as the tests under tests/k8s see it: the lines
`cluster.py env` prints for a running cluster (the same that `make k8s-up` ends with). These tests
never start or stop the cluster themselves: `make k8s-test` brings it up before them and down after.
"""
from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "deploy" / "k8s-local" / "cluster.py"
KEYS = ("KUBECONFIG", "NAMESPACE", "PUSH_URL", "CA_FILE", "SERVICE_TOKEN", "KAFKA_BOOTSTRAP",
        "BRIDGE_STATEFULSET", "ROUTER_DEPLOYMENT", "KAFKA_STATEFULSET", "KUBECTL")


@dataclass(frozen=True)
class Cluster:
    env: dict[str, str]

    def kubectl(self, *args: str, check: bool = True, timeout: float = 120,
                input: str | None = None) -> subprocess.CompletedProcess[str]:
        argv = [self.env["KUBECTL"], "--kubeconfig", self.env["KUBECONFIG"], "-n", self.env["NAMESPACE"], *args]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=input)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr}")
        return result

    def kafka_options(self) -> dict:
        return {"bootstrap_servers": self.env["KAFKA_BOOTSTRAP"], "security_protocol": "PLAINTEXT"}


def parse(lines: str) -> dict[str, str]:
    """KEY=VALUE lines (values shell-quoted only when they need it, which these never do)."""
    env = dict(line.split("=", 1) for line in lines.splitlines() if "=" in line)
    missing = [key for key in KEYS if key not in env]
    assert not missing, f"cluster.py env did not print {missing}"
    return env


@pytest.fixture(scope="session")
def cluster() -> Cluster:
    result = subprocess.run([sys.executable, str(CLUSTER), "env"], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        pytest.fail(f"no local cluster is running (start it with `make k8s-up`): {result.stderr.strip()}")
    return Cluster(parse(result.stdout))
