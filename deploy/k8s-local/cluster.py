#!/usr/bin/env python3
"""The project's own single-node Kubernetes, for running the shipped manifests for real
(docs/kubernetes-local.md). Root only; no systemd needed; cgroup v1 or a hybrid layout.

    cluster.py up     build what is missing (binaries: build.sh; images: podman), start the cluster,
                      deploy the local overlay, then print KEY=VALUE lines for scripts
    cluster.py down   stop and remove everything `up` started, then compare the machine with how
                      it was before (exit 1 when something of the cluster is left)
    cluster.py env    print the lines of the running cluster again

`up` on a running cluster starts nothing twice: it re-applies the overlay, imports images that
changed (restarting their pods), and brings the replica counts back to the starting point.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time

import daemons
import host
import images
import pki
import processes
import record
import workload
from common import (
    CNI_BIN,
    CONTAINERD_SOCKET,
    ENV_FILE,
    HERE,
    HOST_RECORD,
    NAMESPACE,
    RUN,
    STATE,
    ClusterError,
    bin_dir,
    kubectl,
    log,
    run,
    wait_for,
)

PACKAGES = {"containerd": "containerd", "runc": "runc", "containernetworking-plugins": str(CNI_BIN / "bridge"),
            "iptables": "iptables", "conntrack": "conntrack", "nftables": "nft"}


def packages() -> None:
    """containerd, runc, the CNI plugins, iptables and conntrack from Debian's packages (and nft,
    which `down` needs to delete the tables iptables made)."""
    missing = [p for p, probe in PACKAGES.items() if not (os.path.exists(probe) or shutil.which(probe))]
    if not missing:
        return
    if not shutil.which("apt-get"):
        raise ClusterError(f"missing {', '.join(missing)} and no apt-get to install them")
    log(f"installing {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    argv = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]
    if run(argv, check=False, timeout=900, env=env).returncode != 0:
        run(["apt-get", "update", "-qq"], timeout=900, env=env)
        run(argv, timeout=900, env=env)


def binaries() -> None:
    """build.sh: a no-op once its stamp exists; the cold build takes tens of minutes."""
    result = subprocess.run([str(HERE / "build.sh")], stdout=subprocess.PIPE, text=True)
    if result.returncode != 0:
        raise ClusterError("building the Kubernetes binaries failed (its output is above)")
    if not (bin_dir() / "kubelet").exists():
        raise ClusterError(f"build.sh finished but {bin_dir()} has no kubelet")


def up() -> None:
    started = time.monotonic()
    packages()
    binaries()
    record.record()
    host.network_up()
    pki.cluster_pki()
    workload.local_files()
    engine = images.engine_env()
    rendered, objects = workload.render()
    used = workload.pod_images(objects)
    wanted = sorted({image for names in used.values() for image in names} | {daemons.PAUSE_IMAGE})
    images.build(engine, wanted)
    for make in daemons.CONTROL_PLANE:
        processes.start(make())
    processes.start(daemons.containerd())
    changed = images.import_all(engine, wanted)
    restart = workload.existing([w for w, names in used.items() if set(names) & set(changed)])
    workload.addons()
    processes.start(daemons.coredns())
    processes.start(daemons.kubelet())
    daemons.wait_node_ready()
    processes.start(daemons.kube_proxy())  # it reads the node's addresses from the node object
    workload.deploy(rendered, restart)
    lines = workload.env_lines()
    ENV_FILE.write_text("\n".join(lines) + "\n")
    log(f"up in {time.monotonic() - started:.0f}s; these lines are also in {ENV_FILE}")
    print("\n".join(lines), flush=True)


def tasks_left() -> int:
    listed = run(["ctr", "--address", CONTAINERD_SOCKET, "-n", "k8s.io", "tasks", "list", "-q"], check=False, quiet=True)
    return len(listed.stdout.split()) if listed.returncode == 0 else 0


def down() -> None:
    started = time.monotonic()
    if not HOST_RECORD.exists() and not any(processes.running(name) for name in processes.STOP_ORDER):
        log(f"no local cluster was started here (no record in {HOST_RECORD}): nothing to do")
        return
    if processes.running("kube-apiserver") and processes.running("kubelet") and processes.running("containerd"):
        # Without the controllers nothing replaces a pod; the kubelet then stops every container and
        # tears its sandbox down (network included) the way it always does.
        processes.stop("kube-controller-manager")
        processes.stop("kube-scheduler")
        kubectl("delete", "pods", "--all", "--all-namespaces", "--force", "--grace-period=0", "--wait=false",
                check=False, timeout=60)
        try:
            wait_for(lambda: tasks_left() == 0, 90, "every container stopped by the kubelet")
        except ClusterError as exc:
            log(f"{exc}: stopping what is left directly")
    for name in processes.STOP_ORDER:
        processes.stop(name)
    host.kill_leftovers()
    host.iptables_down()
    host.unmount_all()
    host.network_down()
    host.remove_cgroups()
    ours, others = record.restore()
    for directory in (STATE, RUN):
        shutil.rmtree(directory, ignore_errors=True)
    ENV_FILE.unlink(missing_ok=True)
    if others:
        log(f"{len(others)} differences made meanwhile by other programs on the machine left alone, "
            "for example: " + "; ".join(others[:3]))
    if ours:
        raise ClusterError("the machine still differs from before `up`:\n  " + "\n  ".join(ours))
    log(f"down in {time.monotonic() - started:.0f}s; the machine is as it was before `up`")


def env() -> None:
    processes.require_running()
    if kubectl("get", "namespace", NAMESPACE, check=False).returncode != 0:
        raise ClusterError(f"the cluster runs but namespace {NAMESPACE} is missing (run `make k8s-up`)")
    print("\n".join(workload.env_lines()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["up", "down", "env"])
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("k8s-local: the local cluster needs root (network, mounts, cgroups)", file=sys.stderr)
        return 3
    try:
        {"up": up, "down": down, "env": env}[args.command]()
    except ClusterError as exc:
        print(f"k8s-local: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("k8s-local: interrupted; `make k8s-down` removes whatever was started", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
