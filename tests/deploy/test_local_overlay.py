"""The overlay of the project's own cluster (deploy/kubernetes/overlays/local, used by `make k8s-up`):
rendered with stand-in files for its Secrets, valid against the Kubernetes schemas, and changing the
shipped base only where the cluster needs it (images, storage class, Kafka's address, the name on
the certificate, the router Service's address, the bridge's CPU request). Its addresses agree with
the cluster script's (deploy/k8s-local/common.py) and the certificate it makes carries every name
the overlay uses. No cluster needed."""
from __future__ import annotations

import copy
import functools
import importlib
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
from test_deploy_files import (
    KUBERNETES,
    KUBERNETES_VERSIONS,
    ROUTER,
    kubernetes_validate,
    need,
    render,
    run,
    tool,
    yaml,
)

LOCAL = KUBERNETES / "overlays" / "local"
SCRIPTS = KUBERNETES.parent / "k8s-local"
STATEFULSET = "cc-gateway-bridge"


def script(name: str):
    """A module of deploy/k8s-local (plain scripts beside each other, imported by name)."""
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    return importlib.import_module(name)


@functools.cache
def render_local(with_jobs: bool = False) -> list[dict]:
    """The overlay, its paths rebased into a scratch directory and its Secrets' files replaced by
    placeholders (the real ones are made by `make k8s-up` under .local/k8s); with the drain Job
    component added to it when asked, as an operator adds it."""
    need(yaml, "PyYAML")
    scratch = Path(tempfile.mkdtemp(prefix="local-overlay-"))
    kustomization = yaml.safe_load((LOCAL / "kustomization.yaml").read_text())
    resources = []
    for resource in kustomization["resources"]:
        if resource.endswith(".yaml"):  # the overlay's own files: copied beside it
            shutil.copy(LOCAL / resource, scratch / resource)
            resources.append(resource)
        else:
            resources.append(os.path.relpath((LOCAL / resource).resolve(), scratch))
    kustomization["resources"] = resources
    if with_jobs:
        kustomization["components"] = [os.path.relpath(KUBERNETES / "jobs", scratch)]
    for generator in kustomization["secretGenerator"]:
        files = []
        for entry in generator["files"]:
            key = entry.split("=", 1)[0]
            (scratch / f"{generator['name']}-{key}").write_text(f"placeholder {key}\n")
            files.append(f"{key}={generator['name']}-{key}")
        generator["files"] = files
    (scratch / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    result = run([tool("kubectl"), "kustomize", "--load-restrictor", "LoadRestrictionsNone", scratch])
    shutil.rmtree(scratch, ignore_errors=True)
    assert result.returncode == 0, f"kustomize of the local overlay:\n{result.stderr}"
    assert "warning" not in result.stderr.lower(), result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def find(objects: list[dict], kind: str, name: str) -> dict:
    found = [o for o in objects if o["kind"] == kind and re.fullmatch(rf"{name}(-[a-z0-9]{{10}})?",
                                                                      o["metadata"]["name"])]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_local_overlay_matches_schemas(version):
    validator = need(kubernetes_validate, "kubernetes-validate")
    for obj in render_local():
        validator.validate(obj, version, strict=True)


def unhashed(name: str) -> str:
    return re.sub(r"-[a-z0-9]{10}$", "", name)


def without_local_changes(obj: dict) -> dict:
    """`obj` with what the overlay may change put back to the base's form."""
    obj = copy.deepcopy(obj)
    obj["metadata"].pop("namespace", None)
    obj["metadata"]["name"] = unhashed(obj["metadata"]["name"])
    if obj["kind"] in ("StatefulSet", "Deployment"):
        pod = obj["spec"]["template"]["spec"]
        for container in pod["containers"]:
            container["image"] = container["image"].removeprefix("localhost/")
            for source in container.get("envFrom", []):
                source["configMapRef"]["name"] = unhashed(source["configMapRef"]["name"])
            if obj["metadata"]["name"] == STATEFULSET:
                container["resources"]["requests"]["cpu"] = "500m"
        for volume in pod.get("volumes", []):
            if "secret" in volume:
                volume["secret"]["secretName"] = unhashed(volume["secret"]["secretName"])
            if "configMap" in volume:
                volume["configMap"]["name"] = unhashed(volume["configMap"]["name"])
        for claim in obj["spec"].get("volumeClaimTemplates", []):
            claim["spec"].pop("storageClassName", None)
    if obj["kind"] == "Service" and obj["metadata"]["name"] == ROUTER:
        obj["spec"].pop("clusterIP", None)
    if obj["kind"] == "ConfigMap" and "BRIDGE_KAFKA_BOOTSTRAP_SERVERS" in obj.get("data", {}):
        obj["data"].pop("BRIDGE_KAFKA_BOOTSTRAP_SERVERS")
    if obj["kind"] == "ConfigMap" and "REPLICA_TLS_NAME" in obj.get("data", {}):
        obj["data"].pop("REPLICA_TLS_NAME")
    return obj


def test_local_overlay_changes_the_base_only_where_the_cluster_needs_it():
    local = render_local()
    for base in render("base"):
        counterpart = find(local, base["kind"], unhashed(base["metadata"]["name"]))
        assert without_local_changes(counterpart) == without_local_changes(base), \
            f"{base['kind']} {base['metadata']['name']} differs from the base beyond what the local overlay may change"
    images = [c["image"] for o in local if o["kind"] in ("StatefulSet", "Deployment")
              for c in o["spec"]["template"]["spec"]["containers"]]
    assert images and all(i.startswith("localhost/") and not i.endswith(":latest") for i in images), images


def test_local_overlay_agrees_with_the_cluster_script():
    common, pki = script("common"), script("pki")
    local = render_local()
    router = find(local, "Service", ROUTER)
    assert router["spec"]["clusterIP"] == common.ROUTER_IP
    kafka_host = find(local, "Service", "kafka-host")
    assert kafka_host["spec"]["clusterIP"] == common.KAFKA_HOST_IP
    assert all(o["metadata"].get("namespace", common.NAMESPACE) == common.NAMESPACE for o in local)
    env = find(local, "ConfigMap", "cc-gateway-bridge-config")["data"]
    router_env = find(local, "ConfigMap", "cc-gateway-router-env")["data"]
    names = pki.app_names()
    assert env["BRIDGE_KAFKA_BOOTSTRAP_SERVERS"].rsplit(":", 1)[0] in names
    assert router_env["REPLICA_TLS_NAME"] in names and common.ROUTER_IP in names
    kafka = find(local, "StatefulSet", common.KAFKA_STATEFULSET)
    variables = {e["name"]: e.get("value", "") for e in kafka["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert f"HOST://{common.KAFKA_HOST_IP}:9092" in variables["KAFKA_ADVERTISED_LISTENERS"]
    addons = list(yaml.safe_load_all((SCRIPTS / "cluster-addons.yaml").read_text()))
    [storage_class] = [o for o in addons if o["kind"] == "StorageClass"]
    claims = [c for o in local if o["kind"] == "StatefulSet" for c in o["spec"]["volumeClaimTemplates"]]
    assert claims and all(c["spec"]["storageClassName"] == storage_class["metadata"]["name"] for c in claims)


def test_kafka_pod_passes_the_restricted_standard_and_takes_no_service_links():
    pod = find(render_local(), "StatefulSet", "kafka")["spec"]["template"]["spec"]
    assert pod["enableServiceLinks"] is False, "a Service named kafka would inject KAFKA_PORT=tcp://..."
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    [container] = pod["containers"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]


def test_drain_job_runs_the_statefulsets_image_in_the_local_overlay():
    """The local overlay renames the image and leaves the tag to the base, as overlays may."""
    objects = render_local(with_jobs=True)
    [job] = [o for o in objects if o["kind"] == "Job"]
    bridge = find(objects, "StatefulSet", STATEFULSET)
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == \
        bridge["spec"]["template"]["spec"]["containers"][0]["image"]
    assert job["metadata"]["namespace"] == bridge["metadata"]["namespace"]
