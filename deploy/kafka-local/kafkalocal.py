#!/usr/bin/env python3
"""A real single-node Apache Kafka (KRaft: broker and controller in one JVM) on loopback, and the
node-level pieces kafkacluster.py (three such nodes) builds on.

For development (`make kafka`) and for the tests, which start their own on free ports. The jars
come from Maven Central through pom.xml beside this file and are cached in target/lib. Standard
library only, so it runs before the project's virtual environment exists.

    kafkalocal.py start [--home DIR] [--port N] [--ssl-port N] [--controller-port N]
                        [--sasl-ssl-port N] [--sasl-port N] [--tls-dir DIR]
    kafkalocal.py stop  [--home DIR]      SIGTERM, then SIGKILL after a grace period
    kafkalocal.py kill  [--home DIR]      SIGKILL (for fault tests)
    kafkalocal.py status [--home DIR]
    kafkalocal.py jars                    resolve the jars only

Listeners: PLAINTEXT (tools), SSL with required client certificates, SASL_SSL (server certificate
only) and SASL_PLAINTEXT; the SASL ones take PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512 for the users
in USERS (SCRAM credentials are written when the data directory is formatted). The home also gets
property files for Kafka's own clients (client-*.properties). `start` is idempotent (a node already
running from the same home is left alone) and refuses ports another process holds. Data lives in
HOME/data and survives stop/start, so a restarted node still holds what it acknowledged.
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
LIB = HERE / "target" / "lib"
STAMP = LIB / ".resolved"
DEFAULT_HOME = HERE.parent.parent / ".local" / "kafka"
START_TIMEOUT_S = 90.0
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
USERS = {"bridge": "bridge-secret", "admin": "admin-secret"}  # local development credentials only
CLIENT_LISTENERS = ("PLAINTEXT", "SSL", "SASL_SSL", "SASL_PLAINTEXT")
SINGLE_JVM = ["-Xms128m", "-Xmx512m", "-XX:+UseG1GC"]
# Three of these share two cores in the tests: a small heap and the simplest collector.
CLUSTER_JVM = ["-Xms64m", "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"]


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


def java(options: list[str]) -> list[str]:
    return ["java", *options, "-Djava.awt.headless=true", f"-Dlog4j2.configurationFile={HERE / 'log4j2.properties'}",
            "-cp", f"{resolve_jars()}/*"]


# -- processes and ports ---------------------------------------------------------------------------

def port_open(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def check_ports_free(ports: dict[str, int]) -> None:
    """Fail, naming the port, when another process listens on one of `ports`. SO_REUSEADDR as
    the broker itself binds, so connections of a killed predecessor in TIME_WAIT do not count."""
    for name, port in ports.items():
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError as exc:
                raise SystemExit(f"kafka-local: port {port} ({name} listener) is already in use by another "
                                 f"process ({exc.strerror}); stop that process or choose other ports") from None


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


def running(home: Path) -> dict | None:
    """The node's state when its process is alive and its first client listener accepts."""
    state = read_state(home)
    if state and pid_alive(state["pid"]) and port_open(state["port"]):
        return state
    return None


# -- configuration ---------------------------------------------------------------------------------

def new_cluster_id(random_bytes: Callable[[int], bytes] = os.urandom) -> str:
    """16 random bytes in URL-safe base64, never starting with '-' (which command lines take for an
    option; Kafka's own random ids avoid it for the same reason)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(random_bytes(16)).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


def jaas(mechanism: str) -> str:
    if mechanism == "PLAIN":
        users = " ".join(f'user_{name}="{password}"' for name, password in USERS.items())
        return f"org.apache.kafka.common.security.plain.PlainLoginModule required {users};"
    return "org.apache.kafka.common.security.scram.ScramLoginModule required;"


def server_properties(home: Path, node_id: int, ports: dict[str, int], voters: str, tls_dir: Path | None,
                      replicas: int = 1) -> str:
    client = [name for name in CLIENT_LISTENERS if ports.get(name)]
    advertised = [f"{name}://127.0.0.1:{ports[name]}" for name in client]
    props = {
        "process.roles": "broker,controller",
        "node.id": str(node_id),
        "controller.quorum.voters": voters,
        "listeners": ",".join([*advertised, f"CONTROLLER://127.0.0.1:{ports['CONTROLLER']}"]),
        "advertised.listeners": ",".join(advertised),
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": ",".join(["CONTROLLER:PLAINTEXT", *(f"{n}:{n}" for n in client)]),
        "log.dirs": str(home / "data"),
    }
    if "SSL" in client or "SASL_SSL" in client:
        if tls_dir is None:
            raise SystemExit("kafka-local: TLS listeners need --tls-dir (see deploy/tls/make-dev-certs.sh)")
        props.update({
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(tls_dir / "server-bundle.pem"),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(tls_dir / "ca.pem"),
            # SSL clients must present a certificate signed by the local CA (mutual TLS), so the
            # bridge's client-certificate settings are exercised for real; SASL_SSL clients
            # authenticate with SASL and only check the broker's certificate.
            "ssl.client.auth": "required",
            "listener.name.sasl_ssl.ssl.client.auth": "none",
            "ssl.enabled.protocols": "TLSv1.2,TLSv1.3",
        })
    sasl = [name for name in client if name.startswith("SASL_")]
    if sasl:
        props["sasl.enabled.mechanisms"] = ",".join(MECHANISMS)
        for name in sasl:
            for mechanism in MECHANISMS:
                props[f"listener.name.{name.lower()}.{mechanism.lower()}.sasl.jaas.config"] = jaas(mechanism)
    props.update({
        "num.partitions": "6" if replicas == 1 else "12",
        "offsets.topic.replication.factor": str(replicas),
        "offsets.topic.num.partitions": "6",
        "transaction.state.log.replication.factor": str(replicas),
        "transaction.state.log.min.isr": str(min(2, replicas)),
        "transaction.state.log.num.partitions": "6",
        "share.coordinator.state.topic.replication.factor": str(replicas),
        "share.coordinator.state.topic.min.isr": str(min(2, replicas)),
        "group.initial.rebalance.delay.ms": "0",
        "log.cleaner.dedupe.buffer.size": "2097152",
    })
    if replicas > 1:
        props.update({"default.replication.factor": str(replicas), "min.insync.replicas": "2"})
    return "".join(f"{k}={v}\n" for k, v in props.items())


def format_command(props_file: Path, cluster_id: str) -> list[str]:
    # `--cluster-id=ID` rather than `-t ID`, so no id can be taken for an option.
    command = ["kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}", "-c", str(props_file),
               "--ignore-formatted"]
    for mechanism in MECHANISMS[1:]:
        for name, password in USERS.items():
            command += ["--add-scram", f"{mechanism}=[name={name},password={password}]"]
    return command


def client_properties(protocol: str, tls_dir: Path, mechanism: str | None = None, user: str = "bridge") -> str:
    """Settings for Kafka's own clients (`make consume CLIENT_CONFIG=...`)."""
    props = {"security.protocol": protocol, "ssl.truststore.type": "PEM",
             "ssl.truststore.location": str(tls_dir / "ca.pem")}
    if protocol == "SSL":
        props.update({"ssl.keystore.type": "PEM", "ssl.keystore.location": str(tls_dir / "server-bundle.pem")})
    if mechanism:
        module = "plain.PlainLoginModule" if mechanism == "PLAIN" else "scram.ScramLoginModule"
        props.update({"sasl.mechanism": mechanism, "sasl.jaas.config":
                      f'org.apache.kafka.common.security.{module} required username="{user}" '
                      f'password="{USERS[user]}";'})
    return "".join(f"{k}={v}\n" for k, v in props.items())


def write_client_files(home: Path, tls_dir: Path | None) -> None:
    if tls_dir is None:
        return
    (home / "client-ssl.properties").write_text(client_properties("SSL", tls_dir))
    for mechanism in MECHANISMS:
        (home / f"client-sasl_ssl-{mechanism.lower()}.properties").write_text(
            client_properties("SASL_SSL", tls_dir, mechanism))


# -- one node --------------------------------------------------------------------------------------

def launch(home: Path, node_id: int, ports: dict[str, int], voters: str, tls_dir: Path | None,
           cluster_id: str | None = None, replicas: int = 1) -> int:
    """Format the node's data directory if new and start its JVM, unless it already runs; its pid."""
    home.mkdir(parents=True, exist_ok=True)
    state = read_state(home)
    if state and pid_alive(state["pid"]):
        print(f"kafka-local: node {node_id} already running (pid {state['pid']})")
        return state["pid"]
    check_ports_free(ports)
    options = SINGLE_JVM if replicas == 1 else CLUSTER_JVM
    props_file = home / "server.properties"
    props_file.write_text(server_properties(home, node_id, ports, voters, tls_dir, replicas))
    write_client_files(home, tls_dir)
    if not (home / "data" / "meta.properties").exists():
        subprocess.run(java(options) + format_command(props_file, cluster_id or new_cluster_id()),
                       check=True, stdout=subprocess.DEVNULL)
        (home / "scram-users").write_text(" ".join(USERS) + "\n")
    elif not (home / "scram-users").exists():
        print(f"kafka-local: {home / 'data'} was formatted without SCRAM users; SCRAM logins will fail "
              "until it is removed (stop, delete the directory, start)")
    with open(home / "broker.log", "ab") as log:
        proc = subprocess.Popen([*java(options), "kafka.Kafka", str(props_file)], stdout=log, stderr=log,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    state = {"pid": proc.pid, "node_id": node_id, "port": ports["PLAINTEXT"], "ports": ports,
             "tls_dir": str(tls_dir) if tls_dir else None}
    (home / "state.json").write_text(json.dumps(state))
    return proc.pid


def wait_listening(home: Path, timeout_s: float = START_TIMEOUT_S) -> dict:
    """Until every client listener of the node accepts (a broker opens them once it is unfenced);
    fails when its JVM exits first. Returns its state."""
    state = read_state(home)
    pid, deadline = state["pid"], time.monotonic() + timeout_s
    wanted = [port for name, port in state["ports"].items() if name != "CONTROLLER"]
    while not all(port_open(p) for p in wanted):
        if not pid_alive(pid):
            reap(pid)
            raise SystemExit(f"kafka-local: broker exited; see {home / 'broker.log'}")
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            raise SystemExit(f"kafka-local: broker not listening after {timeout_s:.0f}s; see {home / 'broker.log'}")
        time.sleep(0.2)
    return state


def reap(pid: int) -> None:
    """Collect the exit status when the process is our child (tests drive this module in-process)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def describe(ports: dict[str, int]) -> str:
    return ", ".join(f"{name} 127.0.0.1:{ports[name]}" for name in CLIENT_LISTENERS if ports.get(name))


def start(home: Path, port: int, ssl_port: int | None, cport: int, tls_dir: Path | None,
          sasl_ssl_port: int | None = None, sasl_port: int | None = None) -> dict:
    """The single node: replication factor 1 everywhere."""
    ports = {"PLAINTEXT": port, "SSL": ssl_port, "CONTROLLER": cport, "SASL_SSL": sasl_ssl_port,
             "SASL_PLAINTEXT": sasl_port}
    ports = {name: p for name, p in ports.items() if p}
    launch(home, 1, ports, f"1@127.0.0.1:{cport}", tls_dir)
    state = wait_listening(home)
    print(f"kafka-local: running (pid {state['pid']}, {describe(ports)})")
    return state


def signal_node(home: Path, sig: int) -> int | None:
    """Send `sig` to the node's JVM; its pid, or None when it is not running."""
    state = read_state(home)
    if not state or not pid_alive(state["pid"]):
        return None
    os.kill(state["pid"], sig)
    return state["pid"]


def wait_gone(home: Path, pid: int, grace_s: float = 30.0) -> None:
    """Until the process is gone (reaped when it is our child) and its ports are closed: a killed
    JVM's main thread can look like a zombie while other threads still hold the listeners."""
    state = read_state(home) or {}
    ports = [p for p in (state.get("ports") or {}).values() if p] or [state.get("port")]
    deadline = time.monotonic() + grace_s
    while Path(f"/proc/{pid}").exists() or any(port_open(p, 0.2) for p in ports if p):
        if time.monotonic() > deadline:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                raise SystemExit(f"kafka-local: pid {pid} is gone but its ports are still open") from None
            deadline = time.monotonic() + 30
        time.sleep(0.05)
        reap(pid)


def stop(home: Path, sig: int = signal.SIGTERM, grace_s: float = 30.0) -> None:
    """Signal the node and return once it is gone."""
    pid = signal_node(home, sig)
    if pid is None:
        print("kafka-local: not running")
        return
    wait_gone(home, pid, grace_s)
    print(f"kafka-local: stopped (pid {pid})")


# -- command line ----------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["start", "stop", "kill", "status", "jars"])
    parser.add_argument("--home", type=Path, default=DEFAULT_HOME)
    parser.add_argument("--port", type=int, default=9092, help="PLAINTEXT listener")
    parser.add_argument("--ssl-port", type=int, default=9093, help="SSL listener (0: none)")
    parser.add_argument("--controller-port", type=int, default=9094)
    parser.add_argument("--sasl-ssl-port", type=int, default=9095, help="SASL_SSL listener (0: none)")
    parser.add_argument("--sasl-port", type=int, default=9096, help="SASL_PLAINTEXT listener (0: none)")
    parser.add_argument("--tls-dir", type=Path, help="output of deploy/tls/make-dev-certs.sh")
    args = parser.parse_args()
    home = args.home.resolve()
    if args.command == "start":
        start(home, args.port, args.ssl_port or None, args.controller_port,
              args.tls_dir.resolve() if args.tls_dir else None, args.sasl_ssl_port or None, args.sasl_port or None)
    elif args.command in ("stop", "kill"):
        stop(home, signal.SIGKILL if args.command == "kill" else signal.SIGTERM)
    elif args.command == "jars":
        resolve_jars()
    else:
        state = running(home)
        print(json.dumps({"running": bool(state), **(state or read_state(home) or {})}))
        sys.exit(0 if state else 1)


if __name__ == "__main__":
    main()
