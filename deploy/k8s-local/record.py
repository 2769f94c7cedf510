"""The machine as it was before the first `up`, and the comparison `down` ends with.

Before the first `up`, the machine's state is recorded (HOST_RECORD): the kernel settings the
cluster's components change, and a snapshot of interfaces, addresses, routes, iptables rules,
mounts, top-level cgroups and a few well-known paths. `down` puts the settings back, removes the
directories the components made at fixed places and the tables iptables made, then takes the
snapshot again: any difference that is not another program's (podman's networks and containers,
which other work on the machine may start or stop meanwhile) is reported as left by the cluster.
"""
from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

from common import HOST_RECORD, RUN, STATE, run

# Set by the kubelet at start (kernel tunables it expects), by the bridge plugin (forwarding) and by
# this script (bridged traffic through iptables, so that a Service's DNAT is undone for replies
# between two pods of the bridge); kube-proxy's conntrack and localhost settings are switched off
# in its configuration and listed here to check that they stayed as they were.
SYSCTLS = [
    "net/ipv4/ip_forward", "net/bridge/bridge-nf-call-iptables", "net/bridge/bridge-nf-call-ip6tables",
    "vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes", "net/ipv4/conf/all/route_localnet",
    "net/netfilter/nf_conntrack_max", "net/netfilter/nf_conntrack_tcp_timeout_established",
    "net/netfilter/nf_conntrack_tcp_timeout_close_wait", "net/netfilter/nf_conntrack_tcp_be_liberal",
]

# Places the components use whatever their configuration says: the kubelet's device-plugin socket
# (/var/lib/kubelet/device-plugins) and its container log links, the CNI library's result cache
# (/var/lib/cni), the shims' sockets (/run/containerd/s). `down` removes the ones `up` created.
CREATED_AT_FIXED_PLACES = ["/var/lib/kubelet", "/var/log/containers", "/var/log/pods", "/var/lib/cni",
                           "/run/containerd", "/usr/libexec/kubernetes"]
WATCHED_PATHS = [*CREATED_AT_FIXED_PLACES, "/etc/cni/net.d", "/opt/cni", "/var/lib/containerd", "/etc/kubernetes",
                 "/opt/containerd"]
FAMILIES = {"iptables-save": "ip", "ip6tables-save": "ip6"}  # iptables-save of each family, nft's name
CGROUP_ROOT = Path("/sys/fs/cgroup")
# Whatever matches these belongs to another program on the machine (podman), not to the cluster.
OTHERS = ("podman", "NETAVARK", "netavark", "libpod", "/var/lib/cc-gateway-bridge/containers",
          "/run/cc-gateway-bridge/containers", "/run/netns", "aardvark")


def sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name


def read_sysctl(name: str) -> str | None:
    try:
        return sysctl_path(name).read_text().strip()
    except OSError:
        return None


def write_sysctl(name: str, value: str) -> None:
    if read_sysctl(name) != value:
        sysctl_path(name).write_text(value + "\n")


def snapshot() -> dict[str, list[str]]:
    def lines(*argv: str) -> list[str]:
        return run(argv, check=False, quiet=True).stdout.splitlines()

    links = []
    for line in lines("ip", "-o", "link", "show"):
        fields = line.split()
        master = fields[fields.index("master") + 1] if "master" in fields else ""
        links.append(f"{fields[1].rstrip(':').split('@')[0]} {master}".strip())
    rules = []
    for save in ("iptables-save", "ip6tables-save"):
        for line in lines(save):
            if line and not line.startswith("#"):
                rules.append(f"{save}: " + line.split(" [")[0] if line.startswith(":") else f"{save}: {line}")
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    cgroups = [f"{h.name}/{d.name}" for h in CGROUP_ROOT.iterdir() if h.is_dir()
               for d in h.iterdir() if d.is_dir()] if CGROUP_ROOT.is_dir() else []
    return {
        "links": links,
        "addresses": [" ".join(line.split()[1:4]) for line in lines("ip", "-o", "addr", "show")],
        "routes": [line.strip() for line in lines("ip", "route", "show", "table", "all")],
        "iptables": rules,
        "mounts": mounts,
        "cgroups": cgroups,
        "sysctls": [f"{name}={read_sysctl(name)}" for name in SYSCTLS],
        "paths": [p for p in WATCHED_PATHS if os.path.lexists(p)],
    }


def record() -> None:
    """The machine before the first `up` (kept until `down` restores it)."""
    if HOST_RECORD.exists():
        return
    HOST_RECORD.parent.mkdir(parents=True, exist_ok=True)
    HOST_RECORD.write_text(json.dumps({"sysctls": {n: read_sysctl(n) for n in SYSCTLS}, "snapshot": snapshot()},
                                      indent=1))


def differences(before: dict[str, list[str]], after: dict[str, list[str]]) -> tuple[list[str], list[str]]:
    """(left by the cluster, changed by other programs) between two snapshots. Another program's:
    what names it (OTHERS), whatever is on an interface of its own or attached to one, and mounts
    outside the places the cluster uses."""
    devices = {link.split()[0] for link in before["links"] + after["links"] if any(m in link for m in OTHERS)}

    def foreign(kind: str, item: str) -> bool:
        if kind == "mounts":  # the cluster mounts under its own directories only
            return not any(item == p or item.startswith(p + "/") for p in (str(STATE), str(RUN), *WATCHED_PATHS))
        words = item.split()
        on_device = (kind == "addresses" and words[0] in devices) or any(
            word == "dev" and following in devices for word, following in itertools.pairwise(words))
        return on_device or any(marker in item for marker in OTHERS)

    ours, others = [], []
    for kind in before:
        old, new = set(before[kind]), set(after.get(kind, []))
        for sign, items in (("+", new - old), ("-", old - new)):
            for item in sorted(items):
                (others if foreign(kind, item) else ours).append(f"{kind} {sign} {item}")
    return ours, others


def empty_tables_down(before: dict[str, list[str]]) -> None:
    """Tables the kubelet and kube-proxy created (iptables here writes nftables tables, which
    iptables itself cannot delete) once they hold nothing but empty built-in chains."""
    for save, family in FAMILIES.items():
        existed = {line.split("*", 1)[1] for line in before["iptables"] if line.startswith(f"{save}: *")}
        table, empty = "", False
        for line in run([save], check=False, quiet=True).stdout.splitlines():
            if line.startswith("*"):
                table, empty = line[1:], True
            elif line.startswith("-") or (line.startswith(":") and line.split()[1] != "ACCEPT"):
                empty = False
            elif line == "COMMIT" and empty and table not in existed:
                run(["nft", "delete", "table", family, table], check=False, quiet=True)


def restore() -> tuple[list[str], list[str]]:
    """Kernel settings and created paths back as recorded; returns differences() against the record."""
    if not HOST_RECORD.exists():
        return [], []
    recorded = json.loads(HOST_RECORD.read_text())
    for name, value in recorded["sysctls"].items():
        if value is not None and read_sysctl(name) not in (None, value):
            write_sysctl(name, value)
    empty_tables_down(recorded["snapshot"])
    existed = set(recorded["snapshot"]["paths"])
    for path in CREATED_AT_FIXED_PLACES:
        if path not in existed and os.path.lexists(path):
            run(["rm", "-rf", path], check=False)
    return differences(recorded["snapshot"], snapshot())
