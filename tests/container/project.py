"""The compose project of the container test, brought up for real: the project's image built from
its Dockerfile, Kafka, the bridge replicas and the router, from a scratch copy of the files compose
reads, with real TLS material and a token in the .local/ files an operator would write, plus one
override file that this module owns (written by `override`): published ports moved to free
loopback ports (Kafka's advertised host listener follows), so the project never collides with
anything listening on the machine. Used by the test session (conftest.py) and by
`python -m bench.slowloris --target compose`."""
from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support import free_port, make_tls

from . import engine as engines
from . import standins
from .stack import REPLICAS, Stack

TOKEN = "container-test-token"
IMAGE = "localhost/cc-gateway-bridge:local"  # the name docker-compose.yml gives the bridge's image
PREFIX = "ccbridge-ctest-"  # of every project's name, so that leftovers of a killed run are found


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


def remove_leftovers(engine: engines.Engine, prefix: str = PREFIX, older_than_s: float = 1800) -> None:
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


@contextmanager
def running_engine(scratch: Path) -> Iterator[engines.Engine]:
    """The engine (engines.start) with every stand-in image built; stopped on the way out. Raises
    engines.EngineUnavailable when this machine cannot have one."""
    scratch.mkdir(parents=True, exist_ok=True)
    engine = engines.start(scratch)
    try:
        built = standins.ensure(engine.env, log=lambda line: print(line, flush=True))
        if built:
            print(f"stand-ins built: {', '.join(built)}", flush=True)
        yield engine
    finally:
        engines.stop(engine)


@contextmanager
def compose_stack(engine: engines.Engine, directory: Path, replicas: int = REPLICAS) -> Iterator[Stack]:
    """The project built and up in `directory` (a scratch folder) with `replicas` bridges, once
    every replica is ready and in the router's use; `compose down` with its volumes on the way out."""
    remove_leftovers(engine)
    directory.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    previous = standins.image_id(engine.env, IMAGE)
    image = engine.podman("build", "--format", "docker", "--tag", IMAGE, str(engines.ROOT), timeout=600)
    built = time.monotonic()
    if previous and previous != standins.image_id(engine.env, IMAGE):
        # The storage outlives the run: drop the image this build replaced, and build-stage
        # layers nothing has used for a day (recent ones stay, as the build cache).
        engine.podman("rmi", previous, check=False)
        engine.podman("image", "prune", "--force", "--filter", "until=24h", check=False)
    scratch_project(directory)
    kafka_port, push_port = free_port(), free_port()
    (directory / "container-test.override.yml").write_text(override(kafka_port, push_port))
    project = engines.Project(PREFIX + uuid.uuid4().hex[:8], directory,
                              [directory / "docker-compose.yml", directory / "container-test.override.yml"])
    stack = Stack(engine, project, kafka_port, push_port, directory / ".local" / "tls", TOKEN)
    try:
        with engines.HealthDriver(engine, project):
            engine.compose(project, "up", "--detach", "--no-build", "--scale", f"bridge={replicas}")
        stack.wait_ready(replicas)
        print(f"image built in {built - started:.1f}s ({image.stdout.strip()[-12:]}), project up and ready in "
              f"{time.monotonic() - built:.1f}s", flush=True)
        yield stack
    finally:
        stack.down()
