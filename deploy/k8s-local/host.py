"""What the cluster changes on the machine, and how `down` puts it back.

Before the first `up`, the machine's state is recorded (HOST_RECORD): the kernel settings the
cluster's components change, and a snapshot of interfaces, addresses, routes, iptables rules,
mounts, top-level cgroups and a few well-known paths. `down` undoes each change by what it is (the
bridge, kube-proxy's and the kubelet's KUBE-* chains, every mount under the state directories, the
kubepods cgroups, the recorded kernel settings), then takes the snapshot again and reports any
difference that is not another program's (podman's networks and containers, which other work on
the machine may start or stop meanwhile).
"""
from __future__ import annotations

import contextlib
import ipaddress
import itertools
import json
import os
import shlex
import signal
import time
from pathlib import Path

from common import (
    BRIDGE,
    CONTAINERD_SOCKET,
    GATEWAY,
    HOST_RECORD,
    POD_CIDR,
    RUN,
    SERVICE_CIDR,
    STATE,
    ClusterError,
    log,
    run,
)

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
FAMILIES = {"iptables-save": "ip", "ip6tables-save": "ip6"}
OUR_CHAINS = ("KUBE-",)
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


# -- the record and the snapshot -----------------------------------------------------------------

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
    what names it (OTHERS), and whatever is on an interface of its own or attached to one."""
    devices = {link.split()[0] for link in before["links"] + after["links"] if any(m in link for m in OTHERS)}

    def foreign(kind: str, item: str) -> bool:
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


# -- network --------------------------------------------------------------------------------------

def check_ranges() -> None:
    """Neither range may overlap a route or address of the machine other than the cluster's own."""
    ranges = [ipaddress.ip_network(POD_CIDR), ipaddress.ip_network(SERVICE_CIDR)]
    for line in run(["ip", "-o", "-4", "route", "show", "table", "all"], quiet=True).stdout.splitlines():
        fields = line.split()
        target = fields[1] if fields[0] in ("local", "broadcast", "unicast") else fields[0]
        if target == "default" or f"dev {BRIDGE}" in line:
            continue
        try:
            network = ipaddress.ip_network(target, strict=False)
        except ValueError:
            continue
        for wanted in ranges:
            if network.overlaps(wanted):
                raise ClusterError(f"{wanted} (the cluster's) overlaps this machine's route `{line.strip()}`; "
                                   "change POD_CIDR/SERVICE_CIDR in deploy/k8s-local/common.py")


def network_up() -> None:
    """The cluster's bridge with the host's address on it, the route that keeps Service addresses on
    it (never the default route), forwarding between pods, and bridged traffic through iptables."""
    if run(["ip", "link", "show", BRIDGE], check=False, quiet=True).returncode != 0:
        check_ranges()
        run(["ip", "link", "add", BRIDGE, "type", "bridge"])
    prefix = POD_CIDR.split("/")[1]
    if f"{GATEWAY}/{prefix}" not in run(["ip", "-o", "-4", "addr", "show", "dev", BRIDGE]).stdout:
        run(["ip", "addr", "add", f"{GATEWAY}/{prefix}", "dev", BRIDGE])
    run(["ip", "link", "set", BRIDGE, "up"])
    run(["ip", "route", "replace", SERVICE_CIDR, "dev", BRIDGE, "src", GATEWAY])
    write_sysctl("net/ipv4/ip_forward", "1")
    write_sysctl("net/bridge/bridge-nf-call-iptables", "1")


def network_down() -> None:
    for line in run(["ip", "-o", "link", "show", "master", BRIDGE], check=False, quiet=True).stdout.splitlines():
        run(["ip", "link", "delete", line.split()[1].rstrip(":").split("@")[0]], check=False, quiet=True)
    run(["ip", "link", "delete", BRIDGE], check=False, quiet=True)
    for cidr in (POD_CIDR, SERVICE_CIDR):
        for direction in ("-s", "-d"):
            run(["conntrack", "-D", direction, cidr], check=False, quiet=True)


def iptables_down() -> None:
    """Every KUBE-* chain (kube-proxy's and the kubelet's), and the rules that jump to them from the
    built-in chains, in both address families. Nothing else is touched."""
    for save, command in (("iptables-save", "iptables"), ("ip6tables-save", "ip6tables")):
        result = run([save], check=False, quiet=True)
        if result.returncode != 0:
            continue
        table, chains, jumps = "", [], []
        for line in result.stdout.splitlines():
            if line.startswith("*"):
                table = line[1:]
            elif line.startswith(":") and line[1:].startswith(OUR_CHAINS):
                chains.append((table, line[1:].split()[0]))
            elif line.startswith("-A "):
                words = shlex.split(line)
                if not words[1].startswith(OUR_CHAINS) and any(w.startswith(OUR_CHAINS) for w in words[2:]):
                    jumps.append((table, words[1:]))
        for table, words in jumps:
            run([command, "-w", "-t", table, "-D", *words], check=False, quiet=True)
        for action in ("-F", "-X"):
            for table, chain in chains:
                run([command, "-w", "-t", table, action, chain], check=False, quiet=True)


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


# -- processes, mounts, cgroups ---------------------------------------------------------------------

def pids_in_cgroups(name: str = "kubepods") -> set[int]:
    found = set()
    for procs in CGROUP_ROOT.glob(f"*/{name}/**/cgroup.procs"):
        try:
            found.update(int(p) for p in procs.read_text().split())
        except OSError:
            continue
    return found


def shims() -> list[int]:
    """containerd's shim processes started for this cluster's containerd (its socket in their command)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and b"containerd-shim" in argv[0] and str(CONTAINERD_SOCKET).encode() in argv:
                found.append(int(entry.name))
    return found


def kill_leftovers() -> None:
    """Container processes still in the kubepods cgroups, and shims of this cluster's containerd."""
    for _ in range(3):
        victims = pids_in_cgroups() | set(shims())
        if not victims:
            return
        log(f"killing {len(victims)} leftover container or shim processes")
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(1)


def unmount_all() -> None:
    """Every mount under the state directories (the kubelet's volumes and its own root, containerd's
    rootfs and network namespaces), deepest first."""
    roots = (str(STATE), str(RUN))
    for _ in range(5):
        points = {line.split()[4].replace("\\040", " ") for line in Path("/proc/self/mountinfo").read_text().splitlines()}
        ours = sorted((p for p in points if any(p == r or p.startswith(r + "/") for r in roots)), key=len, reverse=True)
        if not ours:
            return
        for point in ours:
            if run(["umount", point], check=False, quiet=True).returncode != 0:
                run(["umount", "-l", point], check=False, quiet=True)
    raise ClusterError(f"mounts under {STATE} or {RUN} remain; see `grep cc-gateway-bridge /proc/self/mountinfo`")


def remove_cgroups(name: str = "kubepods") -> None:
    for top in CGROUP_ROOT.glob(f"*/{name}"):
        for directory in sorted((d for d in top.rglob("*") if d.is_dir()), key=lambda d: len(d.parts), reverse=True):
            with contextlib.suppress(OSError):
                directory.rmdir()
        try:
            top.rmdir()
        except OSError as exc:
            log(f"cannot remove {top}: {exc}")


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
