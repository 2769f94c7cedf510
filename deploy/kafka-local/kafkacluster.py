#!/usr/bin/env python3
"""A real three-node Apache Kafka cluster on loopback, from the same jars as kafkalocal.py.

Each node is a combined broker and controller (KRaft, static quorum of all nodes) with the
listeners of the single node (PLAINTEXT, SSL with client certificates, SASL_SSL, SASL_PLAINTEXT).
Topics default to 12 partitions, replication factor 3 and min.insync.replicas 2, internal topics
included, as on a production cluster. Node N lives in HOME/node-N and keeps its data across
restarts; its ports are BASE + 10 * (N - 1) + 0..4 (PLAINTEXT, SSL, CONTROLLER, SASL_SSL,
SASL_PLAINTEXT). Each JVM gets a 256 MB heap: three of them share the machine with the tests.

    kafkacluster.py start [--home DIR] [--nodes 3] [--base-port 19092] [--tls-dir DIR]
    kafkacluster.py stop | kill | status [--home DIR]     every node at once (SIGTERM | SIGKILL)
    kafkacluster.py node-start | node-stop | node-kill N [--home DIR]
    kafkacluster.py controller [--home DIR]               the node leading the controller quorum

Standard library only.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

import kafkalocal as local

DEFAULT_HOME = local.HERE.parent.parent / ".local" / "kafka-cluster"
PORT_OFFSETS = {"PLAINTEXT": 0, "SSL": 1, "CONTROLLER": 2, "SASL_SSL": 3, "SASL_PLAINTEXT": 4}


def node_home(home: Path, node_id: int) -> Path:
    return home / f"node-{node_id}"


def fixed_ports(nodes: int, base_port: int) -> dict[int, dict[str, int]]:
    return {n: {name: base_port + 10 * (n - 1) + offset for name, offset in PORT_OFFSETS.items()}
            for n in range(1, nodes + 1)}


def read_layout(home: Path) -> dict:
    """HOME/cluster.json: the cluster id, each node's ports, the TLS directory."""
    try:
        layout = json.loads((home / "cluster.json").read_text())
    except (OSError, ValueError):
        raise SystemExit(f"kafka-local: no cluster in {home} (start it first)") from None
    layout["nodes"] = {int(n): ports for n, ports in layout["nodes"].items()}
    return layout


def write_layout(home: Path, ports: dict[int, dict[str, int]], tls_dir: Path | None) -> dict:
    """Ports may change from one start to the next; the cluster id never does."""
    home.mkdir(parents=True, exist_ok=True)
    previous = json.loads((home / "cluster.json").read_text()) if (home / "cluster.json").exists() else {}
    layout = {"cluster_id": previous.get("cluster_id") or local.new_cluster_id(), "nodes": ports,
              "tls_dir": str(tls_dir) if tls_dir else previous.get("tls_dir")}
    (home / "cluster.json").write_text(json.dumps(layout))
    return read_layout(home)


def spawn(home: Path, layout: dict, node_id: int) -> int:
    voters = ",".join(f"{n}@127.0.0.1:{p['CONTROLLER']}" for n, p in sorted(layout["nodes"].items()))
    tls_dir = Path(layout["tls_dir"]) if layout.get("tls_dir") else None
    return local.launch(node_home(home, node_id), node_id, layout["nodes"][node_id], voters, tls_dir,
                        layout["cluster_id"], replicas=min(3, len(layout["nodes"])))


def start(home: Path, tls_dir: Path | None, ports: dict[int, dict[str, int]]) -> dict:
    """Start every node that is not running, all at once (a node opens its client listeners only
    once a quorum of controllers elected a leader), then wait for all of them."""
    layout = write_layout(home, ports, tls_dir)
    started = time.monotonic()
    for n in layout["nodes"]:
        spawn(home, layout, n)
    for n in layout["nodes"]:
        local.wait_listening(node_home(home, n))
    print(f"kafka-local: {len(layout['nodes'])} nodes running after {time.monotonic() - started:.1f}s; SSL bootstrap "
          + ",".join(f"127.0.0.1:{p['SSL']}" for p in layout["nodes"].values()))
    return layout


def node_start(home: Path, node_id: int) -> dict:
    spawn(home, read_layout(home), node_id)
    state = local.wait_listening(node_home(home, node_id))
    print(f"kafka-local: node {node_id} running (pid {state['pid']}, {local.describe(state['ports'])})")
    return state


def node_stop(home: Path, node_id: int, sig: int = signal.SIGTERM) -> None:
    local.stop(node_home(home, node_id), sig)


def stop(home: Path, sig: int = signal.SIGTERM, grace_s: float = 30.0) -> None:
    """Signal every node at once, then wait for each."""
    pids = {n: local.signal_node(node_home(home, n), sig) for n in read_layout(home)["nodes"]}
    for n, pid in pids.items():
        if pid is not None:
            local.wait_gone(node_home(home, n), pid, grace_s)
    print(f"kafka-local: cluster stopped ({sum(p is not None for p in pids.values())} node(s) were running)")


def controller(home: Path) -> int | None:
    """The quorum leader, from the newest election state a live node wrote to its metadata log
    directory (cheaper than starting a client to ask the quorum); None when there is no leader."""
    best: tuple[int, int] | None = None
    for n in read_layout(home)["nodes"]:
        state = local.read_state(node_home(home, n))
        if not state or not local.pid_alive(state["pid"]):
            continue
        try:
            quorum = json.loads((node_home(home, n) / "data" / "__cluster_metadata-0" / "quorum-state").read_text())
        except (OSError, ValueError):
            continue
        if quorum.get("leaderId", -1) >= 0 and (best is None or quorum["leaderEpoch"] > best[0]):
            best = (quorum["leaderEpoch"], quorum["leaderId"])
    return None if best is None else best[1]


def status(home: Path) -> dict:
    layout, nodes = read_layout(home), {}
    for n, ports in layout["nodes"].items():
        state = local.read_state(node_home(home, n))
        nodes[n] = {"running": bool(local.running(node_home(home, n))), "pid": state and state["pid"], **ports}
    return {"cluster_id": layout["cluster_id"], "controller": controller(home), "nodes": nodes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["start", "stop", "kill", "status", "controller", "node-start",
                                            "node-stop", "node-kill"])
    parser.add_argument("node", nargs="?", type=int, help="node id (node-* commands)")
    parser.add_argument("--home", type=Path, default=DEFAULT_HOME)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--base-port", type=int, default=19092, help="first port of node 1")
    parser.add_argument("--tls-dir", type=Path, help="output of deploy/tls/make-dev-certs.sh")
    args = parser.parse_args()
    home, command = args.home.resolve(), args.command
    if command.startswith("node-") and args.node is None:
        parser.error(f"{command} needs a node id")
    if command == "start":
        start(home, args.tls_dir.resolve() if args.tls_dir else None, fixed_ports(args.nodes, args.base_port))
    elif command in ("stop", "kill"):
        stop(home, signal.SIGKILL if command == "kill" else signal.SIGTERM)
    elif command == "status":
        report = status(home)
        print(json.dumps(report))
        sys.exit(0 if all(n["running"] for n in report["nodes"].values()) else 1)
    elif command == "controller":
        print(controller(home))
    elif command == "node-start":
        node_start(home, args.node)
    else:
        node_stop(home, args.node, signal.SIGKILL if command == "node-kill" else signal.SIGTERM)


if __name__ == "__main__":
    main()
