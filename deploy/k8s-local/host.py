"""What the cluster changes on the machine, and how `down` undoes each change by what it is: the
bridge (its veths and the Services' route go with it), kube-proxy's and the kubelet's KUBE-* chains,
every mount under the state directories, the kubepods cgroups and the processes left in them,
containerd's shims. record.py checks the result against the machine as it was.
"""
from __future__ import annotations

import contextlib
import ipaddress
import os
import shlex
import signal
import time
from pathlib import Path

from common import (
    BRIDGE,
    CONTAINERD_SOCKET,
    GATEWAY,
    POD_CIDR,
    RUN,
    SERVICE_CIDR,
    STATE,
    ClusterError,
    log,
    run,
)
from record import CGROUP_ROOT, write_sysctl

OUR_CHAINS = ("KUBE-",)


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
