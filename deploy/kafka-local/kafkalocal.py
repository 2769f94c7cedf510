#!/usr/bin/env python3
"""A real single-node Apache Kafka (KRaft: broker and controller in one JVM) on loopback.

For development (`make kafka`) and for the test suite, which starts its own broker on free
ports. The jars come from Maven Central through pom.xml beside this file and are cached in
target/lib. Standard library only, so it runs before the project's virtual environment exists.

    kafkalocal.py start [--home DIR] [--port N] [--ssl-port N] [--controller-port N] [--tls-dir DIR]
    kafkalocal.py stop  [--home DIR]      SIGTERM, then SIGKILL after a grace period
    kafkalocal.py kill  [--home DIR]      SIGKILL (for fault tests)
    kafkalocal.py status [--home DIR]
    kafkalocal.py jars                    resolve the jars only

`start` is idempotent: a broker already running from the same home is left alone. Data lives in
HOME/data and survives stop/start, so a restarted broker still holds what it acknowledged.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
LIB = HERE / "target" / "lib"
STAMP = LIB / ".resolved"
DEFAULT_HOME = HERE.parent.parent / ".local" / "kafka"
START_TIMEOUT_S = 90.0


def resolve_jars() -> Path:
    """Fetch the broker's runtime jars once; later calls are a stat of the stamp file."""
    pom = HERE / "pom.xml"
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == digest:
        return LIB
    if LIB.exists():
        for old in LIB.glob("*.jar"):
            old.unlink()
    print("kafka-local: resolving Kafka jars from Maven Central (first run only)...", flush=True)
    subprocess.run(
        ["mvn", "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
         "-DincludeScope=runtime", f"-DoutputDirectory={LIB}"],
        check=True,
    )
    STAMP.write_text(digest)
    return LIB


def port_open(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); treat it as gone.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def read_state(home: Path) -> dict | None:
    try:
        return json.loads((home / "state.json").read_text())
    except (OSError, ValueError):
        return None


def server_properties(home: Path, port: int, ssl_port: int | None, cport: int,
                      tls_dir: Path | None) -> str:
    listeners = [f"PLAINTEXT://127.0.0.1:{port}"]
    protocols = ["CONTROLLER:PLAINTEXT", "PLAINTEXT:PLAINTEXT"]
    props = {}
    if ssl_port:
        if tls_dir is None:
            raise SystemExit("kafka-local: --ssl-port needs --tls-dir (see deploy/tls/make-dev-certs.sh)")
        listeners.append(f"SSL://127.0.0.1:{ssl_port}")
        protocols.append("SSL:SSL")
        props.update({
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(tls_dir / "server-bundle.pem"),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(tls_dir / "ca.pem"),
            # Clients must present a certificate signed by the local CA (mutual TLS), so the
            # bridge's client-certificate settings are exercised for real.
            "ssl.client.auth": "required",
            "ssl.enabled.protocols": "TLSv1.2,TLSv1.3",
        })
    advertised = [entry for entry in listeners]
    listeners.append(f"CONTROLLER://127.0.0.1:{cport}")
    props.update({
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{cport}",
        "listeners": ",".join(listeners),
        "advertised.listeners": ",".join(advertised),
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": ",".join(protocols),
        "log.dirs": str(home / "data"),
        "num.partitions": "6",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "6",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "6",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "log.cleaner.dedupe.buffer.size": "2097152",
    })
    return "".join(f"{k}={v}\n" for k, v in props.items())


def start(home: Path, port: int, ssl_port: int | None, cport: int, tls_dir: Path | None) -> dict:
    home.mkdir(parents=True, exist_ok=True)
    state = read_state(home)
    if state and pid_alive(state["pid"]) and port_open(state["port"]):
        print(f"kafka-local: already running (pid {state['pid']}, port {state['port']})")
        return state
    lib = resolve_jars()
    classpath = f"{lib}/*"
    props_file = home / "server.properties"
    props_file.write_text(server_properties(home, port, ssl_port, cport, tls_dir))
    java = ["java", "-Xms128m", "-Xmx512m", "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={HERE / 'log4j2.properties'}", "-cp", classpath]
    if not (home / "data" / "meta.properties").exists():
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        subprocess.run(
            java + ["kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props_file),
                    "--ignore-formatted"],
            check=True, stdout=subprocess.DEVNULL,
        )
    log = open(home / "broker.log", "ab")
    proc = subprocess.Popen(java + ["kafka.Kafka", str(props_file)], stdout=log, stderr=log,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    state = {"pid": proc.pid, "port": port, "ssl_port": ssl_port, "controller_port": cport,
             "tls_dir": str(tls_dir) if tls_dir else None}
    (home / "state.json").write_text(json.dumps(state))
    deadline = time.monotonic() + START_TIMEOUT_S
    wanted = [p for p in (port, ssl_port) if p]
    while not all(port_open(p) for p in wanted):
        if proc.poll() is not None:
            raise SystemExit(f"kafka-local: broker exited with {proc.returncode}; see {home / 'broker.log'}")
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"kafka-local: broker not listening after {START_TIMEOUT_S:.0f}s; see {home / 'broker.log'}")
        time.sleep(0.2)
    ssl_note = f", SSL 127.0.0.1:{ssl_port}" if ssl_port else ""
    print(f"kafka-local: running (pid {proc.pid}, PLAINTEXT 127.0.0.1:{port}{ssl_note})")
    return state


def stop(home: Path, sig: int = signal.SIGTERM, grace_s: float = 30.0) -> None:
    """Signal the broker and return once it is gone: its process reaped (when it is our child) and
    its ports closed. A killed JVM's main thread can already look like a zombie while other threads
    still hold the listeners, so a live-pid check alone would let a restart find the old ports."""
    state = read_state(home)
    if not state or not pid_alive(state["pid"]):
        print("kafka-local: not running")
        return
    pid = state["pid"]
    ports = [p for p in (state["port"], state.get("ssl_port"), state.get("controller_port")) if p]
    os.kill(pid, sig)
    deadline = time.monotonic() + grace_s
    while Path(f"/proc/{pid}").exists() or any(port_open(p, 0.2) for p in ports):
        if time.monotonic() > deadline:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                raise SystemExit(f"kafka-local: pid {pid} is gone but its ports are still open") from None
            deadline = time.monotonic() + 30
        time.sleep(0.05)
        try:  # reap it when it is our child (tests drive this module in-process)
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
    print(f"kafka-local: stopped (pid {pid})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["start", "stop", "kill", "status", "jars"])
    parser.add_argument("--home", type=Path, default=DEFAULT_HOME)
    parser.add_argument("--port", type=int, default=9092, help="PLAINTEXT listener")
    parser.add_argument("--ssl-port", type=int, default=9093, help="SSL listener (0: none)")
    parser.add_argument("--controller-port", type=int, default=9094)
    parser.add_argument("--tls-dir", type=Path, help="output of deploy/tls/make-dev-certs.sh")
    args = parser.parse_args()
    home = args.home.resolve()
    if args.command == "start":
        start(home, args.port, args.ssl_port or None, args.controller_port,
              args.tls_dir.resolve() if args.tls_dir else None)
    elif args.command == "stop":
        stop(home)
    elif args.command == "kill":
        stop(home, signal.SIGKILL)
    elif args.command == "jars":
        resolve_jars()
    else:
        state = read_state(home)
        running = bool(state and pid_alive(state["pid"]) and port_open(state["port"]))
        print(json.dumps({"running": running, **(state or {})}))
        sys.exit(0 if running else 1)


if __name__ == "__main__":
    main()
