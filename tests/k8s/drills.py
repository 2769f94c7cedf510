"""What the drills share: the gateway (bench.simulate) pushing through the router Service, the
cluster's state as the drills read it (pods through the API, each bridge pod's /readyz and each
router pod's server states through their addresses, which the machine reaches), waiting for it to
settle, and reading the drill's records back from Kafka to compare with its ledger."""
from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.simulate import Ledger, SimSettings, Simulator
from bench.verify import Figures, compare, read_committed, seen
from tests.support import until

from .conftest import Cluster

TOPIC = "cc.agent.events"
AGENTS = 200
# The gateway's real timings over a pool of 8 connections shared by every agent.
REAL_TIMINGS = {"agents": AGENTS, "retry_interval_s": 10.0, "signout_after_s": 120.0, "timeout_s": 8.0,
                "think_s": (0.5, 2.5), "drain_s": 60.0, "duration_s": 1800.0, "connections": 8}
WARM_PUSHES_EACH = 2  # every agent has had this many pushes answered before the fault
AFTER_S = 15.0        # the load goes on this long once the fault is over
BRIDGES = 3           # the bridge pods every drill starts and ends with
BRIDGE = "app.kubernetes.io/name=cc-gateway-bridge"
ROUTER = "app.kubernetes.io/name=cc-gateway-router"

Fault = Callable[[Cluster, Ledger], Awaitable[None]]


# -- the cluster as the drills see it ------------------------------------------------------------

@dataclass(frozen=True)
class Pod:
    name: str
    uid: str
    ip: str | None
    ready: bool
    terminating: bool


def pods(cluster: Cluster, selector: str) -> list[Pod]:
    items = json.loads(cluster.kubectl("get", "pods", "-l", selector, "-o", "json").stdout)["items"]
    found = []
    for item in items:
        conditions = {c["type"]: c["status"] for c in item["status"].get("conditions", [])}
        found.append(Pod(item["metadata"]["name"], item["metadata"]["uid"], item["status"].get("podIP"),
                         conditions.get("Ready") == "True", "deletionTimestamp" in item["metadata"]))
    return sorted(found, key=lambda pod: pod.name)


def pod(cluster: Cluster, name: str) -> Pod | None:
    return next((p for p in pods(cluster, BRIDGE) + pods(cluster, ROUTER) if p.name == name), None)


def get(url: str) -> tuple[int, str]:
    """(status, body) of a plain HTTP GET; status 0 when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError:
        return 0, ""


def readyz(bridge: Pod) -> tuple[int, dict[str, Any]]:
    """A bridge pod's /readyz: its status code and what it says (mode, Kafka, spool)."""
    status, body = get(f"http://{bridge.ip}:8081/readyz")
    try:
        return status, json.loads(body) if body else {}
    except ValueError:
        return status, {}


def spooled(state: dict[str, Any]) -> int:
    """Pushes a bridge pod still has to deliver: its own slot, the slots it adopted, and one for each
    slot it sees that nobody delivers."""
    spool = state.get("spool", {})
    adopted = sum(slot.get("entries", 0) for slot in spool.get("adopted", {}).values())
    return int(spool.get("entries", 0)) + adopted + len(spool.get("orphaned", []))


def spools(cluster: Cluster) -> dict[str, int]:
    return {b.name: spooled(readyz(b)[1]) for b in pods(cluster, BRIDGE) if b.ip and not b.terminating}


def ring(router: Pod) -> set[str] | None:
    """The servers a router pod sends pushes to (state UP); None when it does not answer."""
    status, text = get(f"http://{router.ip}:8081/metrics")
    if status != 200:
        return None
    up = set()
    for line in text.splitlines():
        if line.startswith('haproxy_server_status{proxy="bridges"') and 'state="UP"' in line and line.endswith(" 1"):
            up.add(line.split('server="', 1)[1].split('"', 1)[0])
    return up


def metric(target: Pod, name: str) -> float:
    """One sample of a pod's /metrics (a bridge's or a router's), 0 when absent."""
    status, text = get(f"http://{target.ip}:8081/metrics")
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + " ")]
    return values[0] if status == 200 and values else 0.0


@dataclass(frozen=True)
class RouterEvent:
    at: str       # the log's time stamp (UTC, RFC 3339)
    router: str
    text: str     # what HAProxy said about a server of the bridges backend

    @property
    def active(self) -> int | None:
        """The servers the router sent pushes to after this event, when the line says."""
        found = re.search(r"(\d+) active and \d+ backup servers", self.text)
        return int(found.group(1)) if found else None


def router_events(cluster: Cluster, since: str) -> list[RouterEvent]:
    """What the router pods still running logged about the bridge servers since `since` (a time
    stamp): state changes, addresses, maintenance. Each line once (HAProxy repeats it as a warning)."""
    events = []
    for router in pods(cluster, ROUTER):
        result = cluster.kubectl("logs", router.name, "--timestamps", f"--since-time={since}", check=False)
        for line in result.stdout.splitlines():
            at, _, text = line.partition(" ")
            if text.startswith(("Server bridges/", "bridges/", "backend bridges ")):
                events.append(RouterEvent(at, router.name, text))
    return sorted(events, key=lambda e: e.at)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def settled(cluster: Cluster, bridges: int = BRIDGES) -> str | None:
    """None when the drills' starting point holds, else what does not: `bridges` bridge pods ready,
    each taking pushes straight to Kafka with nothing left to deliver, Kafka ready, and two router
    pods ready whose rings are exactly those pods."""
    kafka = [p for p in pods(cluster, "app.kubernetes.io/name=kafka") if p.ready and not p.terminating]
    if not kafka:
        return "Kafka is not ready"
    found = pods(cluster, BRIDGE)
    if len(found) != bridges or not all(b.ready and not b.terminating for b in found):
        return f"bridge pods: {[(b.name, b.ready, b.terminating) for b in found]}"
    for bridge in found:
        status, state = readyz(bridge)
        if status != 200 or state.get("mode") != "direct" or spooled(state):
            return f"{bridge.name}: /readyz {status} {state}"
    wanted = {f"bridge{b.name.rsplit('-', 1)[1]}" for b in found}
    routers = pods(cluster, ROUTER)
    if len(routers) != 2 or not all(r.ready and not r.terminating for r in routers):
        return f"router pods: {[(r.name, r.ready, r.terminating) for r in routers]}"
    rings = {r.name: ring(r) for r in routers}
    if any(servers != wanted for servers in rings.values()):
        return f"router rings {rings}, wanted {sorted(wanted)}"
    return None


async def settle(cluster: Cluster, timeout: float = 300) -> None:
    last: list[str | None] = [None]

    def check() -> bool:
        last[0] = settled(cluster)
        return last[0] is None
    try:
        await until(check, timeout, "the cluster settled", every=1.0)
    except AssertionError as error:
        raise AssertionError(f"{error}; last: {last[0]}") from None


async def replaced(cluster: Cluster, old: Pod, timeout: float = 180) -> float:
    """Until a pod of `old`'s name with another uid is ready and in both routers' rings; the seconds
    it took."""
    began = time.monotonic()
    server = f"bridge{old.name.rsplit('-', 1)[1]}"

    def back() -> bool:
        new = pod(cluster, old.name)
        return (new is not None and new.uid != old.uid and new.ready and readyz(new)[0] == 200
                and all(server in (ring(r) or ()) for r in pods(cluster, ROUTER) if not r.terminating))
    await until(back, timeout, f"{old.name} created again, ready and routed")
    return time.monotonic() - began


# -- Kafka -----------------------------------------------------------------------------------------

async def kafka_scale(cluster: Cluster, replicas: int) -> None:
    """`kubectl scale` of the broker's StatefulSet; returns once it is gone (0) or ready (1)."""
    name = cluster.env["KAFKA_STATEFULSET"]
    await asyncio.to_thread(cluster.kubectl, "scale", f"statefulset/{name}", f"--replicas={replicas}")
    selector = "app.kubernetes.io/name=kafka"
    if replicas:
        await until(lambda: any(p.ready and not p.terminating for p in pods(cluster, selector)), 180, "Kafka ready")
    else:
        await until(lambda: not pods(cluster, selector), 120, "Kafka's pod gone")


async def topic_ends(cluster: Cluster) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(**cluster.kafka_options(), enable_auto_commit=False, isolation_level="read_committed")
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()  # as bench.verify.read_committed does
        partitions = [TopicPartition(TOPIC, p) for p in sorted(consumer.partitions_for_topic(TOPIC) or ())]
        assert partitions, f"no partitions of {TOPIC}"
        return await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()


# -- one drill ---------------------------------------------------------------------------------------

@dataclass
class Row:
    drill: str
    pushes: int
    failed: int
    lost: int
    agents_out_of_order: int
    events_out_of_order: int
    signed_out: int
    longest_failure_s: float
    took_s: float

    HEADER = ("drill", "pushes", "failed", "lost", "out of order", "signed out", "longest failure", "took")

    def cells(self) -> tuple[str, ...]:
        order = (f"{self.agents_out_of_order} agents ({self.events_out_of_order} events)"
                 if self.agents_out_of_order else "0")
        return (self.drill, f"{self.pushes:,}", str(self.failed), str(self.lost), order, str(self.signed_out),
                f"{self.longest_failure_s:.0f} s", f"{self.took_s:.0f} s")


def table(rows: list[Row]) -> str:
    lines = [Row.HEADER, *(row.cells() for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(Row.HEADER))]
    return "\n".join(" | ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True))
                     for line in lines)


@dataclass
class Result:
    row: Row
    figures: Figures
    failures: Counter
    routers: list[RouterEvent]  # what the routers logged about the bridge pods during the drill


async def run_drill(cluster: Cluster, ledger_path: Path, name: str, first_work_no: int, fault: Fault) -> Result:
    """The gateway pushes; once every agent had WARM_PUSHES_EACH pushes answered, `fault`; AFTER_S
    more of load; then every spool delivered, and the drill's records read back."""
    await settle(cluster)
    started, since = time.monotonic(), now()
    ends = await topic_ends(cluster)
    ledger = Ledger(ledger_path)
    env = cluster.env
    sim = Simulator(SimSettings(url=env["PUSH_URL"], cafile=env["CA_FILE"], token=env["SERVICE_TOKEN"],
                                first_work_no=first_work_no, **REAL_TIMINGS), ledger)

    def warm() -> bool:
        counts = Counter(entry["agent"] for entry in ledger.of_kind("ack"))
        return len(counts) == AGENTS and min(counts.values()) >= WARM_PUSHES_EACH

    summary = await sim.around(lambda: fault(cluster, ledger), warm, 120,
                               f"every agent answered {WARM_PUSHES_EACH} times", AFTER_S)
    await settle(cluster)
    records = await read_committed(cluster.kafka_options(), [TOPIC], 300, start=ends)
    ours = [seen(r) for r in records if r.key is not None and first_work_no <= int(r.key) < first_work_no + AGENTS]
    figures = compare(ledger, ours)
    row = Row(name, summary.pushes_acked, sum(summary.failures.values()), figures.lost, figures.agents_out_of_order,
              figures.order_violations, summary.signed_out, figures.longest_failure_s, time.monotonic() - started)
    routers = await asyncio.to_thread(router_events, cluster, since)
    print(f"\n{name}: {summary.line()}\n{name}: {figures.line()}\n{name}: took {row.took_s:.0f} s", flush=True)
    for event in routers:
        print(f"{name}: {event.at[11:23]} {event.router[-5:]} {event.text}", flush=True)
    assert summary.agents == AGENTS and summary.pushes_acked > AGENTS * WARM_PUSHES_EACH, summary.line()
    assert summary.abandoned == summary.events_unsent == 0, summary.line()
    return Result(row, figures, summary.failures, routers)
