"""What runs in the local cluster: its volumes and additions (cluster-addons.yaml), the local overlay
of the shipped manifests with its Secrets, the topics, and the lines `up` prints for scripts.
"""
from __future__ import annotations

import json
import secrets
import shlex
import socket
import ssl

import pki
import yaml
from common import (
    BRIDGE_REPLICAS,
    BRIDGE_STATEFULSET,
    HERE,
    KAFKA_HOST_IP,
    KAFKA_STATEFULSET,
    KUBECONFIG,
    LOCAL,
    NAMESPACE,
    NODE,
    OVERLAY,
    PUSH_PATH,
    ROUTER_DEPLOYMENT,
    ROUTER_IP,
    VOLUMES,
    kubectl,
    log,
    run,
    tool,
    wait_for,
)

TOKEN = LOCAL / "secrets" / "service-tokens"
VOLUME_COUNT = 8
VOLUME_SIZE = "2Gi"  # the bridge's claim asks for 2Gi, Kafka's for 1Gi
STORAGE_CLASS = "cc-bridge-local"
# The bridge's topics (config.env's BRIDGE_TOPIC and the default dead-letter topic), with the
# partition count docker-compose.yml gives them.
TOPICS = ("cc.agent.events", "cc.agent.deadletter")
PARTITIONS = 12


def local_files() -> None:
    """The Secrets' files under .local/k8s: TLS from the development CA, a random service token."""
    pki.app_tls()
    if not TOKEN.exists():
        TOKEN.parent.mkdir(parents=True, exist_ok=True)
        TOKEN.write_text(secrets.token_hex(16) + "\n")
        TOKEN.chmod(0o600)


def token() -> str:
    return TOKEN.read_text().split()[0]


def volumes() -> str:
    """VOLUME_COUNT local PersistentVolumes, one directory each (group-writable for the pods' fsGroup)."""
    documents = []
    for index in range(VOLUME_COUNT):
        path = VOLUMES / f"pv{index}"
        path.mkdir(parents=True, exist_ok=True)
        documents.append({
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": f"{STORAGE_CLASS}-{index}"},
            "spec": {"capacity": {"storage": VOLUME_SIZE}, "accessModes": ["ReadWriteOnce"],
                     "persistentVolumeReclaimPolicy": "Retain", "storageClassName": STORAGE_CLASS,
                     "local": {"path": str(path)},
                     "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                         {"key": "kubernetes.io/hostname", "operator": "In", "values": [NODE]}]}]}}},
        })
    return "\n---\n".join(json.dumps(d) for d in documents)


def reuse_released_volumes() -> None:
    """A volume whose claim was deleted is Released and would stay unused: empty it and offer it again."""
    listed = json.loads(kubectl("get", "pv", "-o", "json").stdout)
    for pv in listed["items"]:
        if pv["spec"].get("storageClassName") == STORAGE_CLASS and pv["status"].get("phase") == "Released":
            path = pv["spec"]["local"]["path"]
            run(["find", path, "-mindepth", "1", "-delete"], check=False)
            kubectl("patch", "pv", pv["metadata"]["name"], "--type", "json",
                    "-p", '[{"op": "remove", "path": "/spec/claimRef"}]')
            log(f"volume {pv['metadata']['name']} emptied and offered again")


def addons() -> None:
    kubectl("apply", "-f", str(HERE / "cluster-addons.yaml"))
    kubectl("apply", "-f", "-", input=volumes())
    reuse_released_volumes()


def render() -> tuple[str, list[dict]]:
    """The local overlay rendered: its text and its objects."""
    text = run([tool("kubectl"), "kustomize", "--load-restrictor", "LoadRestrictionsNone", OVERLAY]).stdout
    return text, [doc for doc in yaml.safe_load_all(text) if doc]


def pod_images(objects: list[dict]) -> dict[str, list[str]]:
    """kind/name of each StatefulSet and Deployment -> the images its pods run."""
    found = {}
    for obj in objects:
        if obj["kind"] in ("StatefulSet", "Deployment"):
            containers = obj["spec"]["template"]["spec"]["containers"]
            found[f"{obj['kind'].lower()}/{obj['metadata']['name']}"] = [c["image"] for c in containers]
    return found


def existing(kind_names: list[str]) -> list[str]:
    return [k for k in kind_names if kubectl("-n", NAMESPACE, "get", k, "-o", "name", check=False, quiet=True).returncode == 0]


def deploy(rendered: str, restart: list[str]) -> None:
    """Apply the overlay, bring the replica counts to the starting point (Kafka 1, bridge 3, also
    after a drill left others), restart the workloads whose image was replaced, create the topics,
    and wait until everything is ready."""
    kubectl("apply", "-f", "-", input=rendered, timeout=180)
    kubectl("-n", NAMESPACE, "scale", f"statefulset/{KAFKA_STATEFULSET}", "--replicas=1")
    kubectl("-n", NAMESPACE, "scale", f"statefulset/{BRIDGE_STATEFULSET}", f"--replicas={BRIDGE_REPLICAS}")
    for workload in restart:
        log(f"restarting {workload}: its image changed")
        kubectl("-n", NAMESPACE, "rollout", "restart", workload)
    kubectl("-n", NAMESPACE, "rollout", "status", f"statefulset/{KAFKA_STATEFULSET}", "--timeout=240s", timeout=260)
    script = " && ".join(
        f"/opt/kafka/bin/kafka-topics.sh --bootstrap-server 127.0.0.1:19092 --create --if-not-exists "
        f"--topic {topic} --partitions {PARTITIONS} --replication-factor 1" for topic in TOPICS)
    wait_for(lambda: kubectl("-n", NAMESPACE, "exec", f"{KAFKA_STATEFULSET}-0", "--", "bash", "-c", script,
                             check=False, timeout=90).returncode == 0, 120, "the bridge's topics created")
    kubectl("-n", NAMESPACE, "rollout", "status", f"statefulset/{BRIDGE_STATEFULSET}", "--timeout=300s", timeout=320)
    kubectl("-n", NAMESPACE, "rollout", "status", f"deployment/{ROUTER_DEPLOYMENT}", "--timeout=180s", timeout=200)
    wait_for(push_port_answers, 60, f"a TLS handshake with the router Service at {ROUTER_IP}:8043")


def push_port_answers() -> bool:
    context = ssl.create_default_context(cafile=str(pki.APP_CA))
    with socket.create_connection((ROUTER_IP, 8043), timeout=3) as raw, \
            context.wrap_socket(raw, server_hostname=ROUTER_IP):
        return True


def env_lines() -> list[str]:
    values = {
        "KUBECONFIG": str(KUBECONFIG),
        "NAMESPACE": NAMESPACE,
        "PUSH_URL": f"https://{ROUTER_IP}:8043{PUSH_PATH}",
        "CA_FILE": str(pki.APP_CA),
        "SERVICE_TOKEN": token(),
        "KAFKA_BOOTSTRAP": f"{KAFKA_HOST_IP}:9092",
        "BRIDGE_STATEFULSET": BRIDGE_STATEFULSET,
        "ROUTER_DEPLOYMENT": ROUTER_DEPLOYMENT,
        "KAFKA_STATEFULSET": KAFKA_STATEFULSET,
        "KUBECTL": tool("kubectl"),
    }
    return [f"{key}={shlex.quote(value)}" for key, value in values.items()]
