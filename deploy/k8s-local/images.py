"""The images the pods run. No registry is reachable, so they are built with the project's own podman
(deploy/containers/setup-engine.sh) and imported into the cluster's containerd with
`ctr images import`, under the localhost/<name>:<tag> names the local overlay gives them:

- localhost/cc-gateway-bridge:<version>  the project's Dockerfile, on the stand-in Python base;
- localhost/haproxy:<tag>, localhost/kafka:<tag>  the stand-ins of tests/container/standins.py
  (the names the shipped manifests use, docker.io/library/haproxy and apache/kafka, re-tagged);
- localhost/pause:<tag>  the pause program built with the binaries, alone in an image: containerd's
  sandbox image, imported before the first pod.

An image is saved and imported again only when podman's id for it changed since its last import.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from common import CONTAINERD_SOCKET, ROOT, STATE, ClusterError, log, run, tool
from daemons import PAUSE_IMAGE

BRIDGE_IMAGE = "localhost/cc-gateway-bridge"
# The name each stand-in has in the engine, by the local name the overlay uses.
STAND_INS = {"localhost/haproxy": "docker.io/library/haproxy", "localhost/kafka": "docker.io/apache/kafka"}
IMPORTED = STATE / "images.json"  # local name -> podman id at its last import


def engine_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTAINERS_")}
    result = run([ROOT / "deploy" / "containers" / "setup-engine.sh"], timeout=900)
    env.update(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    return env


def podman(env: dict[str, str], *args: str, timeout: float = 300, check: bool = True) -> str:
    return run(["podman", *args], env=env, timeout=timeout, check=check, quiet=not check).stdout.strip()


def podman_id(env: dict[str, str], name: str) -> str:
    return podman(env, "image", "inspect", "--format", "{{.Id}}", name, check=False)


def build(env: dict[str, str], wanted: list[str]) -> None:
    """Every image in `wanted` (name:tag) present in the engine, built or re-tagged."""
    log("stand-in base images (built once per machine, then cached)")
    result = subprocess.run([sys.executable, "-m", "tests.container.standins"], cwd=ROOT, env=env, text=True,
                            capture_output=True, timeout=1800)
    if result.returncode != 0:
        raise ClusterError(f"building the stand-in images failed:\n{result.stderr[-3000:]}")
    for image in wanted:
        name, tag = image.rsplit(":", 1)
        if name == BRIDGE_IMAGE:
            log(f"building {image} from the Dockerfile")
            podman(env, "build", "--format", "docker", "--tag", image, str(ROOT), timeout=900)
        elif name in STAND_INS:
            source = f"{STAND_INS[name]}:{tag}"
            if not podman_id(env, source):
                raise ClusterError(f"{image}: no stand-in {source} (tests/container/standins.py builds the "
                                   "tags docker-compose.yml names; the manifests must name the same)")
            podman(env, "tag", source, image)
        elif image == PAUSE_IMAGE:
            if not podman_id(env, image):
                pause_image(env)
        else:
            raise ClusterError(f"the local overlay names {image}, which nothing here builds")


def pause_image(env: dict[str, str]) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        layer = Path(scratch) / "pause.tar"
        with tarfile.open(layer, "w") as tar:
            info = tar.gettarinfo(tool("pause"), arcname="pause")
            info.uid = info.gid = 0
            info.mode = 0o755
            with open(tool("pause"), "rb") as binary:
                tar.addfile(info, binary)
        podman(env, "import", "--change", 'ENTRYPOINT ["/pause"]', "--change", "USER 65535:65535",
               str(layer), PAUSE_IMAGE)


def import_all(env: dict[str, str], wanted: list[str]) -> list[str]:
    """Save each image whose podman id changed since its last import and import it into containerd
    (namespace k8s.io, the CRI's); returns the names imported."""
    imported = json.loads(IMPORTED.read_text()) if IMPORTED.exists() else {}
    present = run(["ctr", "--address", CONTAINERD_SOCKET, "-n", "k8s.io", "images", "list", "-q"]).stdout.split()
    changed = []
    for image in wanted:
        current = podman_id(env, image)
        if imported.get(image) == current and image in present:
            continue
        log(f"importing {image} into containerd")
        with tempfile.TemporaryDirectory(dir=STATE) as scratch:
            archive = Path(scratch) / "image.tar"
            podman(env, "save", "--format", "docker-archive", "--output", str(archive), image, timeout=600)
            run(["ctr", "--address", CONTAINERD_SOCKET, "-n", "k8s.io", "images", "import", archive], timeout=600)
        imported[image] = current
        IMPORTED.write_text(json.dumps(imported, indent=1))
        changed.append(image)
    return changed
