"""Starting and stopping the cluster's daemons: each with its pid file (RUN/pids: the pid, the
command), its log (STATE/logs) and its configuration files, started only when it does not run yet
with the same command and configuration, waited for until it answers, stopped by its pid.
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

from common import API_PORT, CONTAINERD_SOCKET, LOGS, PIDS, PKI, STATE, ClusterError, log, wait_for

STOP_ORDER = ["kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "coredns", "containerd",
              "kube-apiserver", "etcd"]


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


def require_running() -> None:
    missing = [name for name in STOP_ORDER if running(name) is None]
    if missing:
        raise ClusterError(f"not running: {', '.join(missing)} (run `make k8s-up`)")
