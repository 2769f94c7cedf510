"""The cluster's daemons and their configuration: etcd, the API server, the controller manager, the
scheduler, containerd (with the pods' network), CoreDNS, kube-proxy and the kubelet, started and
stopped by processes.py. Flags follow what hack/local-up-cluster.sh of the same Kubernetes version
passes, with every listener on the cluster's bridge address or on loopback.

CoreDNS runs as a host process, like the control plane, rather than as a pod: it needs no image,
no Service account and no pod network of its own, and pods reach it on the bridge's address
(the kubelet's clusterDNS). It serves cluster.local only and has no `forward`: a name outside the
cluster gets no answer from outside the machine.
"""
from __future__ import annotations

import json

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
    PKI,
    POD_CIDR,
    RUN,
    SERVICE_CIDR,
    STATE,
    kubectl,
    tool,
    wait_for,
)
from processes import Daemon

PAUSE_IMAGE = f"localhost/pause:{PAUSE_TAG}"
CONFIG = STATE / "config"


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

def node_ready() -> bool:
    result = kubectl("get", "node", NODE, "-o", "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
                     check=False, quiet=True)
    return result.stdout.strip() == "True"


def wait_node_ready() -> None:
    wait_for(node_ready, 120, f"node {NODE} Ready", str(LOGS / "kubelet.log"))


