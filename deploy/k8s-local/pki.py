"""Certificates of the local cluster, made with openssl: one cluster CA that signs the API server's
serving certificate, the kubelet's, and a client certificate per component (its user and groups
are the certificate's CN and O, as Kubernetes reads them), plus the service-account signing key
and a kubeconfig per client. All of it lives in the state directory and goes with `down`.

The bridge's own TLS material is separate and kept under .local/k8s/tls: the development CA of
deploy/tls/make-dev-certs.sh signs one certificate for every name the gateway, the routers, the
bridge pods and Kafka use inside the cluster (see `app_names`).
"""
from __future__ import annotations

import ipaddress
import secrets
import tempfile
from pathlib import Path

from common import (
    API_PORT,
    API_SERVICE_IP,
    CLUSTER_DOMAIN,
    GATEWAY,
    KAFKA_STATEFULSET,
    LOCAL,
    NAMESPACE,
    NODE,
    PKI,
    ROOT,
    ROUTER_DEPLOYMENT,
    ROUTER_IP,
    run,
)

DAYS = "365"
# name -> (CN, groups): the clients of the API server.
CLIENTS = {
    "admin": ("kubernetes-admin", ["system:masters"]),
    "apiserver-kubelet-client": ("kube-apiserver-kubelet-client", ["system:masters"]),
    "controller-manager": ("system:kube-controller-manager", []),
    "scheduler": ("system:kube-scheduler", []),
    "kube-proxy": ("system:kube-proxy", []),
    "kubelet": (f"system:node:{NODE}", ["system:nodes"]),
    "coredns": ("cc-bridge-k8s:coredns", []),  # bound to its ClusterRole in cluster-addons.yaml
}
APP_TLS = LOCAL / "tls"
APP_CERT = APP_TLS / "cluster.pem"
APP_KEY = APP_TLS / "cluster.key"
APP_BUNDLE = APP_TLS / "cluster-bundle.pem"  # Kafka's PEM key store: key, certificate, CA
APP_CA = APP_TLS / "ca.pem"


def _key(path: Path) -> None:
    run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path])
    path.chmod(0o600)


def _subject(cn: str, groups: list[str]) -> str:
    return "".join(f"/O={g}" for g in groups) + f"/CN={cn}"


def _alt_names(names: list[str]) -> str:
    entries = []
    for name in names:
        try:
            ipaddress.ip_address(name)
            entries.append(f"IP:{name}")
        except ValueError:
            entries.append(f"DNS:{name}")
    return ",".join(entries)


def sign(ca: Path, ca_key: Path, out: Path, key: Path, cn: str, groups: list[str], usage: str,
         names: list[str] | None = None) -> None:
    """A certificate for `key` (made when missing), signed by `ca`; `usage` serverAuth and/or clientAuth."""
    if not key.exists():
        _key(key)
    extensions = ["basicConstraints=critical,CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment",
                  f"extendedKeyUsage={usage}"]
    if names:
        extensions.append(f"subjectAltName={_alt_names(names)}")
    with tempfile.TemporaryDirectory() as scratch:
        csr, ext = Path(scratch) / "csr", Path(scratch) / "ext"
        ext.write_text("\n".join(extensions) + "\n")
        run(["openssl", "req", "-new", "-key", key, "-subj", _subject(cn, groups), "-out", csr])
        run(["openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-set_serial",
             str(secrets.randbits(63)), "-days", DAYS, "-extfile", ext, "-out", out])


def kubeconfig(name: str, server: str) -> Path:
    """A kubeconfig for client `name` that reads its certificate files from PKI."""
    path = PKI / f"{name}.kubeconfig"
    path.write_text(f"""apiVersion: v1
kind: Config
clusters:
- name: cc-bridge-k8s
  cluster:
    server: {server}
    certificate-authority: {PKI / 'ca.crt'}
users:
- name: {name}
  user:
    client-certificate: {PKI / (name + '.crt')}
    client-key: {PKI / (name + '.key')}
contexts:
- name: {name}
  context:
    cluster: cc-bridge-k8s
    user: {name}
    namespace: {NAMESPACE if name == 'admin' else 'default'}
current-context: {name}
""")
    path.chmod(0o600)
    return path


def cluster_pki() -> None:
    """The cluster CA, every component's certificate and kubeconfig, the service-account key pair.
    Made once per cluster (kept while the state directory exists)."""
    PKI.mkdir(parents=True, exist_ok=True)
    PKI.chmod(0o700)
    ca, ca_key = PKI / "ca.crt", PKI / "ca.key"
    if not ca.exists():
        _key(ca_key)
        run(["openssl", "req", "-x509", "-new", "-key", ca_key, "-subj", "/CN=cc-bridge-k8s local cluster CA",
             "-days", DAYS, "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature", "-out", ca])
    server = f"https://{GATEWAY}:{API_PORT}"
    if not (PKI / "apiserver.crt").exists():
        names = ["kubernetes", "kubernetes.default", "kubernetes.default.svc",
                 f"kubernetes.default.svc.{CLUSTER_DOMAIN}", "localhost", GATEWAY, API_SERVICE_IP, "127.0.0.1"]
        sign(ca, ca_key, PKI / "apiserver.crt", PKI / "apiserver.key", "kube-apiserver", [], "serverAuth", names)
    if not (PKI / "kubelet-serving.crt").exists():
        sign(ca, ca_key, PKI / "kubelet-serving.crt", PKI / "kubelet-serving.key", f"system:node:{NODE}",
             ["system:nodes"], "serverAuth", [NODE, GATEWAY])
    for name, (cn, groups) in CLIENTS.items():
        if not (PKI / f"{name}.crt").exists():
            sign(ca, ca_key, PKI / f"{name}.crt", PKI / f"{name}.key", cn, groups, "clientAuth")
        kubeconfig(name, server)
    if not (PKI / "sa.key").exists():
        run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", PKI / "sa.key"])
        run(["openssl", "pkey", "-in", PKI / "sa.key", "-pubout", "-out", PKI / "sa.pub"])


def app_names() -> list[str]:
    """Every name the bridge's certificate must carry here: the router Service (the gateway's push
    URL, by name and by its fixed ClusterIP), the name the routers verify on the bridge pods
    (REPLICA_TLS_NAME in the local overlay), and Kafka's broker as the bridge reaches it."""
    svc = f"{NAMESPACE}.svc"
    return [f"{ROUTER_DEPLOYMENT}.{svc}", f"{ROUTER_DEPLOYMENT}.{svc}.{CLUSTER_DOMAIN}",
            f"{KAFKA_STATEFULSET}-0.{KAFKA_STATEFULSET}.{svc}.{CLUSTER_DOMAIN}", "localhost", ROUTER_IP, "127.0.0.1"]


def app_tls() -> None:
    """The development CA (make-dev-certs.sh, kept under .local/k8s/tls) and the cluster's
    certificate signed by it; remade when the names it must carry change."""
    run([ROOT / "deploy" / "tls" / "make-dev-certs.sh", APP_TLS])
    names_file = APP_TLS / "cluster.names"
    names = "\n".join(app_names()) + "\n"
    if APP_CERT.exists() and names_file.exists() and names_file.read_text() == names:
        return
    # Both sides of every connection use it: servers (router, bridge, Kafka) and clients (the
    # bridge towards Kafka, whose SSL listener asks for a client certificate).
    sign(APP_CA, APP_TLS / "ca.key", APP_CERT, APP_KEY, "cc-gateway-bridge local cluster", [],
         "serverAuth,clientAuth", app_names())
    APP_BUNDLE.write_text(APP_KEY.read_text() + APP_CERT.read_text() + APP_CA.read_text())
    APP_BUNDLE.chmod(0o600)
    names_file.write_text(names)
