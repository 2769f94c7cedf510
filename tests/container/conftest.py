"""The compose project, run for real: the project's image built from its Dockerfile, Kafka, three
bridge replicas and the router, in a private podman (see engine.py and standins.py).

How the project is set up: project.py.

When no engine can be set up here (not root, no apt-get), the tests are skipped with the reason;
under CI (the CI variable set) they fail instead. Everything the project created (containers,
networks, volumes) is removed at the end; the base images stay cached in the engine's storage.
"""
from __future__ import annotations

import os
import time

import pytest

from . import engine as engines
from .project import compose_stack, running_engine
from .stack import Stack


@pytest.fixture(scope="session")
def engine(tmp_path_factory) -> engines.Engine:
    started = time.monotonic()
    try:
        with running_engine(tmp_path_factory.mktemp("engine")) as engine:
            print(f"container engine ready in {time.monotonic() - started:.1f}s", flush=True)
            yield engine
    except engines.EngineUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the container test, but no engine can be set up: {exc}")
        pytest.skip(f"no container engine can be set up on this machine: {exc}")


@pytest.fixture(scope="session")
def stack(engine, tmp_path_factory) -> Stack:
    with compose_stack(engine, tmp_path_factory.mktemp("compose-project")) as running:
        yield running
