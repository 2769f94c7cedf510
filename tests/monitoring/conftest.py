"""promtool for the monitoring tests: from the machine, or unpacked once from Debian's
`prometheus` package by deploy/monitoring/get-promtool.sh (cached outside the working copy).

Where it cannot be had (no apt-get), the tests that need it are skipped with the reason; under
CI (the CI variable set) they fail instead.

This directory is a package (it has an __init__.py): a second top-level `conftest` module would
replace tests/conftest.py in sys.modules.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
CANNOT = 3  # get-promtool.sh: no promtool and no way to fetch one here


@pytest.fixture(scope="session")
def promtool() -> str:
    result = subprocess.run([str(MONITORING / "get-promtool.sh")], capture_output=True, text=True, timeout=300)
    if result.returncode == CANNOT:
        if os.environ.get("CI"):
            pytest.fail(f"CI must check the rules, but promtool cannot be had: {result.stderr.strip()}")
        pytest.skip(f"promtool cannot be had on this machine: {result.stderr.strip()}")
    assert result.returncode == 0, f"get-promtool.sh failed:\n{result.stderr}"
    return result.stdout.strip()


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=120)
