"""What every part of the local cluster shares: where its files live, the addresses it uses, and
running a command with a clear error instead of a stack trace.

All addresses are on a bridge of the cluster's own (BRIDGE): the API server, the kubelet and
CoreDNS listen on its address, etcd on loopback, and pods get no default route, so nothing the
cluster does leaves the machine. The ranges are checked against the machine's routes before the
bridge is made (podman uses 10.88.0.0/16 and allocates 10.89.0.0/16 and up for its networks).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

K8S_VERSION = os.environ.get("K8S_VERSION", "v1.34.4")
PAUSE_TAG = "3.10.1"  # build/pause/Makefile of that Kubernetes version

# Machine state (removed by `down`) and the project's own local files (kept: certificates, token).
STATE = Path(os.environ.get("K8S_STATE_DIR", "/var/lib/cc-gateway-bridge/k8s"))
RUN = Path(os.environ.get("K8S_RUN_DIR", "/run/cc-gateway-bridge/k8s"))
LOCAL = ROOT / ".local" / "k8s"
PKI = STATE / "pki"
LOGS = STATE / "logs"
PIDS = RUN / "pids"
VOLUMES = STATE / "volumes"
KUBELET_ROOT = STATE / "kubelet"
CONTAINERD_ROOT = STATE / "containerd"
CONTAINERD_STATE = RUN / "containerd"
CONTAINERD_SOCKET = RUN / "containerd.sock"
CNI_CONF = STATE / "cni" / "net.d"
CNI_BIN = Path("/usr/lib/cni")  # Debian's containernetworking-plugins
HOST_RECORD = STATE / "host-before.json"  # the machine as it was before the first `up`
KUBECONFIG = PKI / "admin.kubeconfig"
ENV_FILE = LOCAL / "env"  # the lines `up` prints, for scripts that come later

BRIDGE = "cck8s0"
NODE = "ccbridge-node"
GATEWAY = "172.30.0.1"  # the bridge's address on the host: API server, kubelet, CoreDNS
POD_CIDR = "172.30.0.0/24"
SERVICE_CIDR = "172.31.0.0/24"
API_SERVICE_IP = "172.31.0.1"  # the `kubernetes` Service, always the range's first address
# Fixed ClusterIPs (the static band at the bottom of the range) that the host reaches through
# kube-proxy: the router's push port, and Kafka's plain listener for reading records back.
ROUTER_IP = "172.31.0.10"
KAFKA_HOST_IP = "172.31.0.11"
CLUSTER_DOMAIN = "cluster.local"
API_PORT = 6443
ETCD_CLIENT = "127.0.0.1:12379"
ETCD_PEER = "127.0.0.1:12380"

NAMESPACE = "cc-bridge"
BRIDGE_STATEFULSET = "cc-gateway-bridge"
ROUTER_DEPLOYMENT = "cc-gateway-router"
KAFKA_STATEFULSET = "kafka"
BRIDGE_REPLICAS = 3
PUSH_PATH = "/service-cloud/rest/cc-ai/v1/agentevent/pushresult"
OVERLAY = ROOT / "deploy" / "kubernetes" / "overlays" / "local"

T = TypeVar("T")


class ClusterError(Exception):
    """Something the cluster needs is missing or failed; the message says what and where to look."""


def log(message: str) -> None:
    print(f"k8s-local: {message}", file=sys.stderr, flush=True)


def bin_dir() -> Path:
    cache = Path(os.environ.get("K8S_CACHE", Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                                / "cc-bridge-k8s"))
    return cache / K8S_VERSION / "bin"


def tool(name: str) -> str:
    return str(bin_dir() / name)


def kubectl_argv() -> list[str]:
    return [tool("kubectl"), "--kubeconfig", str(KUBECONFIG)]


def run(argv: Sequence[str | Path], *, check: bool = True, timeout: float = 120, quiet: bool = False,
        input: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command to completion; a failure (when `check`) becomes a ClusterError with its output."""
    argv = [str(a) for a in argv]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=input, env=env)
    except FileNotFoundError:
        raise ClusterError(f"{argv[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise ClusterError(f"{' '.join(argv[:4])} ... did not finish within {timeout:.0f}s") from None
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()[-2000:]
        raise ClusterError(f"{' '.join(argv[:6])} failed ({result.returncode}): {detail}")
    if not quiet and result.stderr.strip() and result.returncode != 0:
        log(result.stderr.strip()[-500:])
    return result


def kubectl(*args: str, check: bool = True, timeout: float = 120, input: str | None = None,
            quiet: bool = False) -> subprocess.CompletedProcess[str]:
    return run([*kubectl_argv(), *args], check=check, timeout=timeout, input=input, quiet=quiet)


def wait_for(check: Callable[[], T | None], timeout: float, what: str, where: str = "",
             interval: float = 0.5) -> T:
    """Poll `check` until it returns something truthy; a ClusterError naming `what` after `timeout`.
    A ClusterError raised by `check` (a daemon that exited, say) ends the wait at once."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except OSError:
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise ClusterError(f"{what} not seen within {timeout:.0f}s" + (f"; see {where}" if where else ""))
        time.sleep(interval)
