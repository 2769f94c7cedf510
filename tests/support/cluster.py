"""The local three-node Kafka cluster (deploy/kafka-local/kafkacluster.py): replication factor 3,
min.insync.replicas 2, every node on loopback with ports chosen once."""
from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError
from aiokafka.protocol.metadata import MetadataRequest

from .kafka import bridge_kafka_env, client_options, load_kafkacluster, load_kafkalocal
from .ports import free_port
from .processes import pause_process, resume_process


@dataclass
class Cluster:
    """A three-node Kafka cluster in `home` (deploy/kafka-local/kafkacluster.py): replication factor
    3, min.insync.replicas 2. Nodes are numbered from 1; their ports are chosen once."""

    home: Path
    tls: Path
    size: int = 3
    ports: dict[int, dict[str, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._kc = load_kafkacluster()
        self._kl = load_kafkalocal()
        if not self.ports:
            self.ports = {n: {name: free_port() for name in self._kc.PORT_OFFSETS} for n in range(1, self.size + 1)}
        self._paused: set[int] = set()

    @property
    def nodes(self) -> list[int]:
        return sorted(self.ports)

    @property
    def bootstrap(self) -> str:
        return self.address("SSL")

    def address(self, protocol: str = "SSL", nodes: list[int] | None = None) -> str:
        return ",".join(f"127.0.0.1:{self.ports[n][protocol]}" for n in nodes or self.nodes)

    def _home(self, node: int) -> Path:
        return self._kc.node_home(self.home, node)

    def pid(self, node: int) -> int | None:
        state = self._kl.read_state(self._home(node))
        return state["pid"] if state and self._kl.pid_alive(state["pid"]) else None

    def running(self) -> list[int]:
        return [n for n in self.nodes if self.pid(n) is not None]

    def start(self) -> Cluster:
        """Start every node that is not running and return once all of them accept clients."""
        self._run(self._kc.start, self.home, self.tls, self.ports)
        return self

    def start_node(self, node: int) -> None:
        self._run(self._kc.node_start, self.home, node)

    def kill_node(self, node: int) -> None:
        """SIGKILL one node: no controlled shutdown, leadership moves only once it is fenced."""
        self.resume_node(node)
        self._kl.stop(self._home(node), signal.SIGKILL)

    def stop_node(self, node: int) -> None:
        """SIGTERM one node: a controlled shutdown hands its leaderships over first."""
        self.resume_node(node)
        self._kl.stop(self._home(node))

    def pause_node(self, node: int) -> None:
        if pause_process(self.pid(node)):
            self._paused.add(node)

    def resume_node(self, node: int) -> None:
        if node in self._paused:
            resume_process(self.pid(node))
        self._paused.discard(node)

    def stop(self) -> None:
        for node in list(self._paused):
            self.resume_node(node)
        self._kc.stop(self.home)

    def kill(self) -> None:
        for node in list(self._paused):
            self.resume_node(node)
        self._kc.stop(self.home, signal.SIGKILL)

    def controller(self) -> int | None:
        """The node leading the controller quorum (None while there is no leader)."""
        return self._kc.controller(self.home)

    async def partitions(self, topics: list[str] | None = None) -> list[dict]:
        """Partition metadata (`topic`, `partition`, `leader`, `replicas`, `isr`) as a running node
        sees it (every topic when `topics` is None). Asked of a node known to run: a killed node
        stays in the cluster's metadata until the controller fences it."""
        running = self.running()
        client = AIOKafkaClient(bootstrap_servers=self.address("PLAINTEXT", running), request_timeout_ms=5000)
        try:
            await client.bootstrap()
            for node in running:
                try:
                    response = await client.send(node, MetadataRequest(topics))
                    break
                except (KafkaError, OSError, TimeoutError):
                    continue
            else:
                raise KafkaError(f"no running node answered a metadata request (running: {running})")
        finally:
            await client.close()
        return [{"topic": t["topic"], **p} for t in response.to_object()["topics"] for p in t["partitions"]]

    async def leaders(self, topic: str) -> dict[int, int]:
        """partition -> node leading it (-1: none)."""
        return {p["partition"]: p["leader"] for p in await self.partitions([topic])}

    async def wait_in_sync(self, timeout_s: float = 120.0) -> float:
        """Until every partition of every topic has a leader and all its replicas in sync (a node
        that came back has caught up); returns the seconds it took."""
        started = time.monotonic()
        while True:
            try:
                lagging = [p for p in await self.partitions() if p["leader"] < 0 or len(p["isr"]) < len(p["replicas"])]
            except (KafkaError, OSError, TimeoutError):  # no node answered yet; ask again
                lagging = ["no answer"]
            if not lagging:
                return time.monotonic() - started
            if time.monotonic() - started > timeout_s:
                raise RuntimeError(f"partitions not in sync after {timeout_s:.0f} s: {lagging[:5]}")
            await asyncio.sleep(0.5)

    def client_options(self, protocol: str = "SSL", mechanism: str | None = None, password: str | None = None) -> dict:
        return client_options(self.address(protocol), self.tls, protocol, mechanism, password)

    def bridge_env(self, protocol: str = "SSL", mechanism: str | None = None,
                   password: str | None = None) -> dict[str, str]:
        return {**bridge_kafka_env(self.address(protocol), self.tls, protocol, mechanism, password),
                "BRIDGE_TOPIC_REPLICATION_FACTOR": str(min(3, self.size))}

    @staticmethod
    def _run(function: Callable, *args) -> None:
        try:
            function(*args)
        except SystemExit as exc:  # the script's way of failing
            raise RuntimeError(f"kafka-local: {exc}") from None
