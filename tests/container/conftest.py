"""The compose project, run for real: the project's image built from its Dockerfile, Kafka, three
bridge replicas and the router, in a private podman (see engine.py and standins.py).

The project runs from a scratch copy of the files compose reads, with real TLS material and a
token in the .local/ files an operator would write, plus one override file that this test owns
(written by `override`): published ports moved to free loopback ports (Kafka's advertised host
listener follows), so the test never collides with anything listening on the machine.

When no engine can be set up here (not root, no apt-get), the tests are skipped with the reason;
under CI (the CI variable set) they fail instead. Everything the project created (containers,
networks, volumes) is removed at the end; the base images stay cached in the engine's storage.
"""
from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path

import pytest

from tests.support import free_port, make_tls

from . import engine as engines
from . import standins
from .stack import REPLICAS, Stack

TOKEN = "container-test-token"
IMAGE = "localhost/cc-gateway-bridge:local"  # the name docker-compose.yml gives the bridge's image


@pytest.fixture(scope="session")
def engine(tmp_path_factory) -> engines.Engine:
    started = time.monotonic()
    try:
        engine = engines.start(tmp_path_factory.mktemp("engine"))
    except engines.EngineUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the container test, but no engine can be set up: {exc}")
        pytest.skip(f"no container engine can be set up on this machine: {exc}")
    try:
        built = standins.ensure(engine.env, log=lambda line: print(line, flush=True))
        print(f"container engine ready in {time.monotonic() - started:.1f}s"
              f" (stand-ins built: {', '.join(built) or 'none, all cached'})", flush=True)
        yield engine
    finally:
        engines.stop(engine)


def override(kafka_port: int, push_port: int) -> str:
    lines = [
        "# The container test's own override (generated for one run): free loopback ports instead of",
        "# the fixed ones, so the test never collides with anything else on the machine.",
        "services:",
        "  kafka:",
        "    ports: !override",
        f'      - "127.0.0.1:{kafka_port}:9092"',
        "    environment:",
        f"      KAFKA_ADVERTISED_LISTENERS: INTERNAL://kafka:19092,HOST://localhost:{kafka_port}",
        "  router:",
        "    ports: !override",
        f'      - "127.0.0.1:{push_port}:8043"',
    ]
    return "\n".join(lines) + "\n"


def scratch_project(directory: Path) -> Path:
    for name in ("docker-compose.yml", "Dockerfile", ".dockerignore"):
        shutil.copy(engines.ROOT / name, directory / name)
    shutil.copytree(engines.ROOT / "deploy" / "compose", directory / "deploy" / "compose")
    make_tls(directory / ".local" / "tls")
    (directory / ".local" / "tokens").mkdir()
    (directory / ".local" / "tokens" / "service-tokens").write_text(f"{TOKEN}\n")
    return directory


def remove_leftovers(engine: engines.Engine, prefix: str, older_than_s: float = 1800) -> None:
    """Containers, volumes and networks of an earlier run of this test that could not clean up
    (killed mid-run): projects of this test whose containers are all older than a run can last,
    so that a run going on beside this one is left alone."""
    label = "com.docker.compose.project"
    newest: dict[str, float] = {}
    for container in json.loads(engine.podman("ps", "-a", "--format", "json").stdout or "[]"):
        project = (container.get("Labels") or {}).get(label, "")
        if project.startswith(prefix):
            newest[project] = max(newest.get(project, 0), container["Created"])
    for project, created in newest.items():
        if time.time() - created < older_than_s:
            continue
        engine.podman("rm", "-f", "-t", "0", "--filter", f"label={label}={project}", check=False)
        for kind in ("volume", "network"):
            names = engine.podman(kind, "ls", "--filter", f"label={label}={project}", "--format", "{{.Name}}",
                                  check=False).stdout.split()
            if names:
                engine.podman(kind, "rm", "-f", *names, check=False)


@pytest.fixture(scope="session")
def stack(engine, tmp_path_factory) -> Stack:
    prefix = "ccbridge-ctest-"
    remove_leftovers(engine, prefix)
    started = time.monotonic()
    previous = standins.image_id(engine.env, IMAGE)
    image = engine.podman("build", "--format", "docker", "--tag", IMAGE, str(engines.ROOT), timeout=600)
    built = time.monotonic()
    if previous and previous != standins.image_id(engine.env, IMAGE):
        # The storage outlives the run: drop the image this build replaced, and build-stage
        # layers nothing has used for a day (recent ones stay, as the build cache).
        engine.podman("rmi", previous, check=False)
        engine.podman("image", "prune", "--force", "--filter", "until=24h", check=False)
    directory = scratch_project(tmp_path_factory.mktemp("compose-project"))
    kafka_port, push_port = free_port(), free_port()
    (directory / "container-test.override.yml").write_text(override(kafka_port, push_port))
    project = engines.Project(prefix + uuid.uuid4().hex[:8], directory,
                              [directory / "docker-compose.yml", directory / "container-test.override.yml"])
    stack = Stack(engine, project, kafka_port, push_port, directory / ".local" / "tls", TOKEN)
    try:
        with engines.HealthDriver(engine, project):
            engine.compose(project, "up", "--detach", "--no-build", "--scale", f"bridge={REPLICAS}")
        stack.wait_ready(REPLICAS)
        print(f"image built in {built - started:.1f}s ({image.stdout.strip()[-12:]}), project up and ready in "
              f"{time.monotonic() - built:.1f}s", flush=True)
        yield stack
    finally:
        stack.down()
