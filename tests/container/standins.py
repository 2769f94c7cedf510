"""Stand-ins for the base images the project names, made from Debian's packages.

No container registry is reachable from the project's machines, so the images that the Dockerfile
and docker-compose.yml name are built here with mmdebstrap and imported under those very names:

- python:<tag>       Debian 12's Python 3.11 with pip and venv (the official image has its own
                     build of that Python line under /usr/local);
- apache/kafka:<tag> Debian's OpenJDK 17 with the Kafka jars that deploy/kafka-local resolves
                     from Maven Central (the same Kafka version), and the scripts in
                     standins/kafka, which keep the official image's KAFKA_* conventions;
- haproxy:<tag>      Debian 12's HAProxy (the 2.6 line; the compose file names 2.8).

Each image carries a label with a digest of its recipe (packages, hooks, the files copied in):
an image whose label matches is kept, so a second run costs one `podman image inspect` per image;
any change to a recipe rebuilds that image. The images live in the engine's storage, which
survives between clean clones (see deploy/containers/storage.conf).

    python -m tests.container.standins     build whatever is missing (needs the engine's settings)
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent / "standins"
LABEL = "org.cc-gateway-bridge.standin-recipe"
SOURCES = (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list"))
TRIM = 'rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/* "$1"/usr/share/doc/* "$1"/usr/share/man/*'
LOCAL_CAS = Path("/usr/local/share/ca-certificates")
PATH_ENV = "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class Recipe:
    """One image: Debian packages, customize hooks, files copied in, and the image settings."""

    name: str
    packages: list[str]
    hooks: list[str] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)
    copy_in: dict[str, Path] = field(default_factory=dict)  # target directory -> local directory
    inputs: list[Path] = field(default_factory=list)  # other files the hooks read

    def digest(self) -> str:
        h = hashlib.sha256(json.dumps([self.name, self.packages, self.hooks, self.changes,
                                       sorted(self.copy_in)]).encode())
        for path in self.inputs:
            h.update(path.read_bytes())
        for source in self.copy_in.values():
            for path in sorted(p for p in source.rglob("*") if p.is_file()):
                h.update(str(path.relative_to(source)).encode())
                h.update(path.read_bytes() if path.stat().st_size < 1 << 20 else str(path.stat().st_size).encode())
                h.update(b"x" if os.access(path, os.X_OK) else b"-")
        return h.hexdigest()[:16]


def named_images() -> dict[str, str]:
    """The base images the project names: python (Dockerfile), kafka and haproxy (compose)."""
    froms = re.findall(r"^FROM\s+(\S+)", (ROOT / "Dockerfile").read_text(), re.M)
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    images = {s.get("image") for s in compose["services"].values()}
    pick = lambda word: next(i for i in images if i and word in i.split("/")[-1])  # noqa: E731
    assert len(set(froms)) == 1, f"the Dockerfile's stages use different bases: {froms}"
    return {"python": froms[0], "kafka": pick("kafka"), "haproxy": pick("haproxy")}


def qualified(image: str) -> str:
    """Docker's reading of a short name: python:3 is docker.io/library/python:3."""
    first = image.split("/")[0]
    if "/" in image and ("." in first or ":" in first or first == "localhost"):
        return image
    return f"docker.io/{image}" if "/" in image else f"docker.io/library/{image}"


def kafka_version() -> str:
    return re.search(r"<kafka.version>([^<]+)<", (ROOT / "deploy/kafka-local/pom.xml").read_text()).group(1)


def recipes(scratch: Path) -> list[Recipe]:
    images = named_images()
    python = Recipe(
        qualified(images["python"]),
        ["python3", "python3-pip", "python3-venv", "python-is-python3", "ca-certificates"],
        # Certificate authorities added to this machine (an egress proxy's, for example) go in
        # too, so that `pip install` inside a build reaches the package index as the host does.
        hooks=[f'for c in {LOCAL_CAS}/*.crt; do [ -f "$c" ] && cp "$c" "$1"/usr/local/share/ca-certificates/; done; true',
               'chroot "$1" update-ca-certificates >/dev/null',
               'rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED', TRIM],
        changes=[PATH_ENV, "ENV LANG=C.UTF-8", 'CMD ["python3"]'],
        inputs=sorted(LOCAL_CAS.glob("*.crt")),
    )
    tag = images["kafka"].rsplit(":", 1)[1]
    if tag != kafka_version():
        raise RuntimeError(f"docker-compose.yml names {images['kafka']} but deploy/kafka-local resolves "
                           f"Kafka {kafka_version()}: the stand-in would not be that version")
    kafka = Recipe(
        qualified(images["kafka"]),
        ["openjdk-17-jre-headless", "procps"],
        hooks=['chroot "$1" useradd --uid 1000 --user-group --create-home --shell /bin/bash appuser',
               'mkdir -p "$1"/var/lib/kafka/data',
               'chroot "$1" chown -R appuser:appuser /var/lib/kafka /opt/kafka/config', TRIM],
        changes=[PATH_ENV, "USER appuser", "EXPOSE 9092", "WORKDIR /home/appuser",
                 'CMD ["/etc/kafka/docker/run"]'],
        copy_in={"/opt": kafka_tree(scratch), "/etc/kafka/docker": HERE / "kafka" / "docker"},
    )
    haproxy = Recipe(
        qualified(images["haproxy"]),
        ["haproxy"],
        hooks=['mkdir -p "$1"/usr/local/etc/haproxy', TRIM],
        # The official image's user, stop signal and command (master-worker, in the foreground).
        changes=[PATH_ENV, "USER haproxy", "STOPSIGNAL SIGUSR1",
                 'CMD ["haproxy", "-W", "-db", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]'],
    )
    return [python, kafka, haproxy]


def kafka_tree(scratch: Path) -> Path:
    """/opt/kafka of the stand-in: libs/ (the jars, hard-linked when possible), bin/, config/."""
    sys.path.insert(0, str(ROOT / "deploy" / "kafka-local"))
    import kafkalocal

    jars = kafkalocal.resolve_jars()
    tree = scratch / "opt"
    libs = tree / "kafka" / "libs"
    libs.mkdir(parents=True)
    for jar in jars.glob("*.jar"):
        try:
            os.link(jar, libs / jar.name)
        except OSError:
            shutil.copy2(jar, libs / jar.name)
    shutil.copytree(HERE / "kafka" / "bin", tree / "kafka" / "bin")
    shutil.copytree(HERE / "kafka" / "config", tree / "kafka" / "config")
    return tree


def podman(env: dict[str, str], *args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], env=env, capture_output=True, text=True, **kwargs)


def image_id(env: dict[str, str], name: str) -> str | None:
    result = podman(env, "image", "inspect", "--format", "{{.Id}}", name)
    return result.stdout.strip() if result.returncode == 0 else None


def current(env: dict[str, str], recipe: Recipe, digest: str) -> bool:
    result = podman(env, "image", "inspect", "--format", "{{json .Labels}}", recipe.name)
    return result.returncode == 0 and (json.loads(result.stdout) or {}).get(LABEL) == digest


def build(env: dict[str, str], recipe: Recipe, digest: str) -> None:
    sources = next((s for s in SOURCES if s.is_file()), None)
    if sources is None:
        raise RuntimeError("no apt sources file to take Debian's mirror from")
    command = ["mmdebstrap", "--quiet", "--variant=minbase", "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
               "--include=" + ",".join(recipe.packages)]
    for target, source in recipe.copy_in.items():
        command += ["--customize-hook=mkdir -p \"$1\"" + target,
                    f"--customize-hook=copy-in {' '.join(str(p) for p in sorted(source.iterdir()))} {target}"]
    command += [f"--customize-hook={hook}" for hook in recipe.hooks]
    command += ["bookworm", "-", str(sources)]
    importer = ["podman", "import"]
    for change in [*recipe.changes, f"LABEL {LABEL}={digest}"]:
        importer += ["--change", change]
    importer += ["-", recipe.name]
    bootstrap = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    imported = subprocess.run(importer, env=env, stdin=bootstrap.stdout, capture_output=True, text=True)
    bootstrap.stdout.close()
    errors = bootstrap.stderr.read().decode(errors="replace")
    if bootstrap.wait() != 0 or imported.returncode != 0:
        raise RuntimeError(f"building {recipe.name} failed:\n{errors}\n{imported.stderr}")


def ensure(env: dict[str, str], log=print) -> list[str]:
    """Build every stand-in whose recipe changed or that is missing; returns the images built."""
    built = []
    with tempfile.TemporaryDirectory(prefix="standins-") as scratch:
        for recipe in recipes(Path(scratch)):
            digest = recipe.digest()
            if current(env, recipe, digest):
                continue
            log(f"standins: building {recipe.name} from Debian's packages")
            previous = image_id(env, recipe.name)
            build(env, recipe, digest)
            built.append(recipe.name)
            if previous and previous != image_id(env, recipe.name):
                podman(env, "rmi", previous)  # the superseded stand-in (kept if something still uses it)
    return built


def main() -> int:
    env = dict(os.environ)
    for line in subprocess.run([str(ROOT / "deploy/containers/setup-engine.sh")], check=True,
                               capture_output=True, text=True).stdout.splitlines():
        key, _, value = line.partition("=")
        env[key] = value
    built = ensure(env)
    print(f"standins: built {', '.join(built)}" if built else "standins: every image is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
