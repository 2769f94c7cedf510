"""The cluster's daemons: etcd, the API server, the controller manager, the scheduler, containerd,
CoreDNS, kube-proxy and the kubelet. Each is started by this script with its pid file (RUN/pids),
its log (STATE/logs) and its configuration written here, waited for until it answers, and
stopped by its pid. Flags follow what hack/local-up-cluster.sh of the same Kubernetes version
passes, with every listener on the cluster's bridge address or on loopback.

CoreDNS runs as a host process, like the control plane, rather than as a pod: it needs no image,
no Service account and no pod network of its own, and pods reach it on the bridge's address
(the kubelet's clusterDNS). It serves cluster.local only and has no `forward`: a name outside the
cluster gets no answer from outside the machine.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from common import (
    API_PORT,
    BRIDGE,
    CLUSTER_DOMAIN,
    CNI_BIN,
    CNI_CONF,
    CONTAINERD_ROOT,
    CONTAINERD_SOCKET,
    CONTAINERD_STATE,
    ETCD_CLIENT,
    ETCD_PEER,
    GATEWAY,
    KUBELET_ROOT,
    LOGS,
    NODE,
    PAUSE_TAG,
    PIDS,
    PKI,
    POD_CIDR,
    RUN,
    SERVICE_CIDR,
    STATE,
    ClusterError,
    kubectl,
    log,
    tool,
    wait_for,
)

PAUSE_IMAGE = f"localhost/pause:{PAUSE_TAG}"
CONFIG = STATE / "config"


@dataclass
class Daemon:
    name: str
    argv: list[str]
    ready: str  # a URL answering 200 once the daemon serves, or "containerd"
    timeout: float = 90
    files: dict[Path, str] = field(default_factory=dict)  # configuration written before the start


def get(url: str) -> bool:
    """200 from `url`: https with the admin's client certificate when it is the API server."""
    context = None
    if url.startswith("https"):
        context = ssl.create_default_context(cafile=str(PKI / "ca.crt"))
        if f":{API_PORT}/" in url:
            context.load_cert_chain(str(PKI / "admin.crt"), str(PKI / "admin.key"))
        else:  # controller manager and scheduler serve a certificate of their own making
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=3, context=context) as answer:
            return bool(answer.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def containerd_answers() -> bool:
    return subprocess.run(["ctr", "--address", str(CONTAINERD_SOCKET), "version"], capture_output=True,
                          timeout=10).returncode == 0


# -- pid files ------------------------------------------------------------------------------------

def pid_file(name: str) -> Path:
    return PIDS / f"{name}.pid"


def running(name: str) -> int | None:
    """The daemon's pid when the process the pid file names is alive and is still that program."""
    try:
        recorded = json.loads(pid_file(name).read_text())
        pid = int(recorded["pid"])
        argv0 = (Path("/proc") / str(pid) / "cmdline").read_bytes().split(b"\0")[0].decode()
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, ValueError, KeyError):
        return None
    return pid if argv0 == recorded["argv0"] and state not in ("Z", "X") else None


def recorded_argv(name: str) -> list[str] | None:
    try:
        return list(json.loads(pid_file(name).read_text())["argv"])
    except (OSError, ValueError, KeyError):
        return None


def start(daemon: Daemon) -> None:
    """Start `daemon` unless it runs already with the same command and configuration (one that
    runs with others is stopped first), then wait until it answers."""
    changed = [path for path, text in daemon.files.items() if not path.exists() or path.read_text() != text]
    if running(daemon.name) is not None and (changed or recorded_argv(daemon.name) != daemon.argv):
        log(f"{daemon.name}: its command or configuration changed, restarting it")
        stop(daemon.name)
    for path in changed:  # only then: kube-proxy, for one, exits when its file is written at all
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(daemon.files[path])
    log_path = LOGS / f"{daemon.name}.log"
    process = None
    if running(daemon.name) is None:
        PIDS.mkdir(parents=True, exist_ok=True)
        LOGS.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as out:
            process = subprocess.Popen(daemon.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True, cwd=STATE)
        pid_file(daemon.name).write_text(json.dumps({"pid": process.pid, "argv0": daemon.argv[0],
                                                     "argv": daemon.argv}))
        log(f"started {daemon.name} (pid {process.pid}, log {log_path})")

    def ready() -> bool:
        alive = process.poll() is None if process is not None else running(daemon.name) is not None
        if not alive:
            tail = log_path.read_text(errors="replace")[-1500:] if log_path.exists() else ""
            raise ClusterError(f"{daemon.name} exited; the end of {log_path}:\n{tail}")
        return containerd_answers() if daemon.ready == "containerd" else get(daemon.ready)

    wait_for(ready, daemon.timeout, f"{daemon.name} answering", str(log_path))


def stop(name: str, timeout: float = 20) -> None:
    pid = running(name)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while running(name) is not None and time.monotonic() < deadline:
            time.sleep(0.2)
        if running(name) is not None:
            log(f"{name} (pid {pid}) ignored SIGTERM for {timeout:.0f}s: SIGKILL")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)
        log(f"stopped {name} (pid {pid})")
    pid_file(name).unlink(missing_ok=True)


# -- the daemons, in start order ---------------------------------------------------------------------

def etcd() -> Daemon:
    client, peer = f"http://{ETCD_CLIENT}", f"http://{ETCD_PEER}"
    return Daemon("etcd", [tool("etcd"), "--name", "local", "--data-dir", str(STATE / "etcd"),
                           "--listen-client-urls", client, "--advertise-client-urls", client,
                           "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                           "--initial-cluster", f"local={peer}", "--log-level", "warn"],
                  f"{client}/health")


def apiserver() -> Daemon:
    return Daemon("kube-apiserver", [
        tool("kube-apiserver"), f"--etcd-servers=http://{ETCD_CLIENT}",
        f"--bind-address={GATEWAY}", f"--advertise-address={GATEWAY}", f"--secure-port={API_PORT}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        f"--client-ca-file={PKI / 'ca.crt'}",
        f"--tls-cert-file={PKI / 'apiserver.crt'}", f"--tls-private-key-file={PKI / 'apiserver.key'}",
        f"--kubelet-client-certificate={PKI / 'apiserver-kubelet-client.crt'}",
        f"--kubelet-client-key={PKI / 'apiserver-kubelet-client.key'}",
        f"--kubelet-certificate-authority={PKI / 'ca.crt'}", "--kubelet-preferred-address-types=InternalIP",
        f"--service-account-issuer=https://kubernetes.default.svc.{CLUSTER_DOMAIN}",
        f"--service-account-key-file={PKI / 'sa.pub'}", f"--service-account-signing-key-file={PKI / 'sa.key'}",
        "--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
        "--allow-privileged=false", "--profiling=false", "--v=1",
    ], f"https://{GATEWAY}:{API_PORT}/readyz")


def controller_manager() -> Daemon:
    kubeconfig = str(PKI / "controller-manager.kubeconfig")
    return Daemon("kube-controller-manager", [
        tool("kube-controller-manager"), f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}", f"--authorization-kubeconfig={kubeconfig}",
        f"--bind-address={GATEWAY}", "--leader-elect=false", "--use-service-account-credentials=true",
        f"--service-account-private-key-file={PKI / 'sa.key'}", f"--root-ca-file={PKI / 'ca.crt'}",
        f"--cluster-signing-cert-file={PKI / 'ca.crt'}", f"--cluster-signing-key-file={PKI / 'ca.key'}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        f"--flex-volume-plugin-dir={STATE / 'volume-plugins'}", "--profiling=false", "--v=1",
    ], f"https://{GATEWAY}:10257/healthz")


def scheduler() -> Daemon:
    kubeconfig = str(PKI / "scheduler.kubeconfig")
    return Daemon("kube-scheduler", [
        tool("kube-scheduler"), f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}", f"--bind-address={GATEWAY}", "--leader-elect=false",
        "--profiling=false", "--v=1",
    ], f"https://{GATEWAY}:10259/healthz")


def containerd() -> Daemon:
    config = CONFIG / "containerd.toml"
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    text = f"""version = 2
root = "{CONTAINERD_ROOT}"
state = "{CONTAINERD_STATE}"

[grpc]
  address = "{CONTAINERD_SOCKET}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{CONTAINERD_ROOT}/opt"

[{cri}]
  # Imported before the first pod: no registry is reachable.
  sandbox_image = "{PAUSE_IMAGE}"
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  # The machine gives root no CAP_SYS_RESOURCE, so no process may lower its oom_score_adj: keep
  # the values the kubelet asks for (-998 for sandboxes) at containerd's own or above, or runc
  # fails every sandbox ("can't get final child's PID from pipe").
  restrict_oom_score_adj = true

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  # cgroupfs, as the kubelet's cgroupDriver: there is no systemd.
  SystemdCgroup = false
  BinaryName = "/usr/sbin/runc"
  Root = "{RUN / 'runc'}"

[{cri}.cni]
  bin_dir = "{CNI_BIN}"
  conf_dir = "{CNI_CONF}"
  max_conf_num = 1
"""
    # The pods' network: the cluster's bridge, addresses from POD_CIDR, a route to the Services'
    # range through the host and no default route; no masquerading, no host ports.
    network = {
        "cniVersion": "1.0.0", "name": "cc-bridge-k8s",
        "plugins": [{
            "type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False, "hairpinMode": True,
            "ipam": {"type": "host-local", "dataDir": str(STATE / "cni" / "ipam"),
                     "ranges": [[{"subnet": POD_CIDR, "gateway": GATEWAY}]],
                     "routes": [{"dst": SERVICE_CIDR}]},
        }],
    }
    return Daemon("containerd", ["containerd", "--config", str(config)], "containerd",
                  files={config: text, CNI_CONF / "10-cc-bridge-k8s.conflist": json.dumps(network, indent=1)})


def coredns() -> Daemon:
    corefile = CONFIG / "Corefile"
    text = f""".:53 {{
    bind {GATEWAY}
    errors
    ready {GATEWAY}:8181
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {PKI / 'coredns.kubeconfig'} coredns
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }}
}}
"""
    return Daemon("coredns", [tool("coredns"), "-conf", str(corefile)], f"http://{GATEWAY}:8181/ready",
                  files={corefile: text})


def kube_proxy() -> Daemon:
    config = CONFIG / "kube-proxy.yaml"
    text = f"""apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: {PKI / 'kube-proxy.kubeconfig'}
hostnameOverride: {NODE}
mode: iptables
clusterCIDR: {POD_CIDR}
bindAddress: {GATEWAY}
healthzBindAddress: {GATEWAY}:10256
metricsBindAddress: {GATEWAY}:10249
nodePortAddresses: ["{GATEWAY}/32"]
iptables:
  # No NodePorts on 127.0.0.1: that would set net.ipv4.conf.all.route_localnet.
  localhostNodePorts: false
  masqueradeAll: false
# Zero: leave the machine's conntrack settings alone.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
"""
    return Daemon("kube-proxy", [tool("kube-proxy"), f"--config={config}", "--v=1"],
                  f"http://{GATEWAY}:10256/livez", files={config: text})


def kubelet() -> Daemon:
    config = CONFIG / "kubelet.yaml"
    text = f"""apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: {GATEWAY}
port: 10250
readOnlyPort: 0
healthzBindAddress: {GATEWAY}
healthzPort: 10248
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: {PKI / 'ca.crt'}
authorization:
  mode: Webhook
tlsCertFile: {PKI / 'kubelet-serving.crt'}
tlsPrivateKeyFile: {PKI / 'kubelet-serving.key'}
# No systemd here, and cgroup v1 (which v1.34 still accepts).
cgroupDriver: cgroupfs
failCgroupV1: false
containerRuntimeEndpoint: unix://{CONTAINERD_SOCKET}
clusterDomain: {CLUSTER_DOMAIN}
clusterDNS: ["{GATEWAY}"]
# Pods get the cluster's DNS only, never the machine's resolvers.
resolvConf: ""
podLogsDir: {STATE / 'pod-logs'}
volumePluginDir: {STATE / 'volume-plugins'}
# The images were imported and cannot be pulled again: never collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
rotateCertificates: false
"""
    return Daemon("kubelet", [tool("kubelet"), f"--config={config}", f"--kubeconfig={PKI / 'kubelet.kubeconfig'}",
                              f"--root-dir={KUBELET_ROOT}", f"--hostname-override={NODE}", f"--node-ip={GATEWAY}",
                              "--v=1"],
                  f"http://{GATEWAY}:10248/healthz", files={config: text})


CONTROL_PLANE = [etcd, apiserver, controller_manager, scheduler]
STOP_ORDER = ["kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "coredns", "containerd",
              "kube-apiserver", "etcd"]


def node_ready() -> bool:
    result = kubectl("get", "node", NODE, "-o", "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
                     check=False)
    return result.stdout.strip() == "True"


def wait_node_ready() -> None:
    wait_for(node_ready, 120, f"node {NODE} Ready", str(LOGS / "kubelet.log"))


def require_running() -> None:
    missing = [name for name in STOP_ORDER if running(name) is None]
    if missing:
        raise ClusterError(f"not running: {', '.join(missing)} (run `make k8s-up`)")
