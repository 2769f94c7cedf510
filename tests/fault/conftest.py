"""Fault drills: a broker of their own (they kill it), started once for the module that asks.

This directory is a package (it has an __init__.py) on purpose: a second top-level `conftest`
module would replace tests/conftest.py in sys.modules, and the integration tests import helpers
from it by that name.
"""
from __future__ import annotations

import pytest

from tests.support import Broker


@pytest.fixture(scope="module")
def drill_broker(tmp_path_factory, tls_dir) -> Broker:
    broker = Broker(tmp_path_factory.mktemp("drill-kafka"), tls_dir)
    try:
        broker.start()
        yield broker
    finally:
        broker.kill()
