"""Fault drills: kill, stop and freeze real brokers and bridges under sustained gateway load.

Each scenario gets a fresh topic and bridge process, on one shared single-node broker or on one
shared three-node cluster (replication factor 3, min.insync.replicas 2). The simulator
(bench.simulate) pushes for `duration_s` seconds; at `fault_at` of that time the fault is
injected; load continues for at least `after_s` once the fault is over; the simulator's queues are
drained; then bench.verify reads the topic back and the figures line is printed. A scenario fails
when an acknowledged event is missing from Kafka or an agent's events are out of order.

Single broker:
  broker-kill      kill -9 the broker, restart it at once (its data directory is kept)
  bridge-kill      kill -9 the bridge, restart it at once
  bridge-term      SIGTERM the bridge (graceful shutdown), restart it when it has exited
  broker-pause     SIGSTOP the broker JVM for `pause_s` (longer than the bridge's publish bound), SIGCONT
  broker-outage    kill -9 the broker and restart it after `outage_s`
  long-outage      the bridge with its outage spool; the broker dead for `long_outage_s`, longer than
                   the gateway's 120 s sign-out window, then back: no push may fail, the spool drains
  two-replicas     like long-outage, with two bridges (a spool each) behind a local HAProxy, so one
                   agent's pushes land on both; reports reorders as consumers see them and after
                   ordering each agent's records by receipt time (ce_time)
  replica-loss     `replicas` bridges sharing one spool directory behind an agent-affine router; Kafka
                   dead for `long_outage_s`, one replica killed with a spool, back `return_after_s`
                   after Kafka (bench/replica_drills.py); replica-loss-separate: a spool directory
                   each, as in Kubernetes, measuring how many agents come out of order
Three-node cluster, the bridge with its outage spool as deployed (each ends once every partition
has all its replicas in sync again):
  leader-kill      kill -9 a broker leading partitions of the topic (not the active controller),
                   restart it after `node_down_s`
  controller-kill  kill -9 the active controller (it leads partitions too), restart it after `node_down_s`
  rolling-restart  SIGTERM each node in turn, restart it, wait for the replicas to catch up
  quorum-loss      kill -9 two of three nodes (no controller quorum, no min ISR), restart them after `outage_s`

    python -m bench.faults --agents 500 --duration 300
    python -m bench.faults --agents 200 --duration 40 --retry-interval 1 --scenarios broker-kill,bridge-kill
    python -m bench.faults --agents 300 --duration 90 --scenarios cluster

The simulator's ledger records "fault" and "restored" marks; the recovery figure is the time from
"restored" to the first push answered "0" after it.
"""
from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import BridgeProcess, Broker, Cluster, LoadBalancer, make_tls

from . import TOKEN, replica_drills
from .simulate import Ledger, SimSettings, Simulator, Summary, pair
from .verify import RESTORED, Figures, Seen, compare, read_topics

BROKER_SCENARIOS = ("broker-kill", "bridge-kill", "bridge-term", "broker-pause", "broker-outage", "long-outage",
                    "two-replicas", *replica_drills.SCENARIOS)
LONG_ONLY = ("two-replicas", *replica_drills.SCENARIOS)  # not in `make test`'s short form
CLUSTER_SCENARIOS = ("leader-kill", "controller-kill", "rolling-restart", "quorum-loss")
SCENARIOS = BROKER_SCENARIOS + CLUSTER_SCENARIOS
SPOOLED = ("long-outage", "two-replicas", *replica_drills.SCENARIOS, *CLUSTER_SCENARIOS)  # with the outage spool
DRAIN_TIMEOUT_S = 300.0
FIRST_ACK_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class DrillSettings:
    agents: int = 50
    duration_s: float = 20.0          # gateway load per scenario, fault included
    fault_at: float = 0.3             # when the fault starts, as a fraction of duration_s
    after_s: float = 8.0              # load kept up at least this long once the fault is over
    retry_interval_s: float = 1.0
    timeout_s: float = 8.0
    signout_after_s: float = 120.0
    think_s: tuple[float, float] = (0.5, 2.5)
    drain_s: float = 30.0
    pause_s: float = 8.0              # broker-pause: how long the JVM stays frozen
    outage_s: float = 12.0            # broker-outage, quorum-loss: how long the brokers stay dead
    long_outage_s: float = 130.0      # long-outage, two-replicas: longer than the sign-out window
    node_down_s: float = 10.0         # leader-kill, controller-kill: how long the node stays dead
    replicas: int = 3                 # replica-loss: bridges behind the agent-affine router
    return_after_s: float = 30.0      # replica-loss: the killed replica returns this long after Kafka
    partitions: int = 6
    bridge_env: dict[str, str] = field(default_factory=dict)


@dataclass
class DrillResult:
    scenario: str
    figures: Figures
    summary: Summary
    topic: str
    fault_s: float                    # how long the fault action took (kill to back up)
    not_ready_s: float = 0.0          # time any bridge's /readyz said 503 while it was running
    log_lines: int = 0                # lines the bridges logged (warnings and errors) during the drill

    @property
    def failed_pushes(self) -> int:
        return sum(self.summary.failures.values())

    @property
    def ok(self) -> bool:
        """Nothing acknowledged lost or reordered; with a spool, also no push failed (none can while
        a push can be kept somewhere) and nobody was signed out. Across two replicas the order is
        judged as a consumer restores it (by ce_time)."""
        f = self.figures
        if self.scenario == replica_drills.SHARED:  # the kill fails the pushes in flight: they are retried
            return f.ok and f.signed_out == 0
        if self.scenario == replica_drills.SEPARATE:  # order is measured, not promised
            return f.lost == 0 and f.signed_out == 0
        if self.scenario == "two-replicas":
            return f.lost == 0 and f.restored_order_violations == 0 and f.signed_out == 0
        if self.scenario in SPOOLED:
            return f.ok and f.signed_out == 0 and self.failed_pushes == 0
        return f.ok

    def line(self) -> str:
        return (f"scenario={self.scenario} fault_s={self.fault_s:.1f} failed_pushes={self.failed_pushes} "
                f"not_ready_s={self.not_ready_s:.1f} log_lines={self.log_lines} {self.figures.line()}")


async def inject(scenario: str, kafka: Broker | Cluster, bridge: BridgeProcess, settings: DrillSettings,
                 topic: str, log: Callable[[str], None] = print) -> None:
    """The fault itself; returns once the broken piece is back. Blocking steps run in threads so
    the simulator's event loop keeps pushing (and keeps answering TLS closes) meanwhile."""
    run = asyncio.to_thread
    if scenario in CLUSTER_SCENARIOS:
        await inject_cluster(scenario, kafka, settings, topic, log)
    elif scenario == "broker-kill":
        await run(kafka.kill)
        await run(kafka.start)
    elif scenario == "bridge-kill":
        await run(bridge.kill)
        await run(bridge.start)
    elif scenario == "bridge-term":
        await run(bridge.stop, signal.SIGTERM)
        await run(bridge.start)
    elif scenario == "broker-pause":
        await run(kafka.pause)
        try:
            await asyncio.sleep(settings.pause_s)
        finally:
            await run(kafka.resume)
    elif scenario in ("broker-outage", "long-outage", "two-replicas"):
        await run(kafka.kill)
        await asyncio.sleep(settings.outage_s if scenario == "broker-outage" else settings.long_outage_s)
        await run(kafka.start)
    else:
        raise ValueError(f"unknown scenario {scenario!r}; choose from {', '.join(SCENARIOS)}")


async def inject_cluster(scenario: str, cluster: Cluster, settings: DrillSettings, topic: str,
                         log: Callable[[str], None]) -> None:
    run = asyncio.to_thread
    controller = cluster.controller()
    if scenario == "rolling-restart":
        for node in cluster.nodes:
            await run(cluster.stop_node, node)
            await run(cluster.start_node, node)
            log(f"[{scenario}] node {node} back, in sync after {await cluster.wait_in_sync():.1f} s more")
        return
    if controller is None:
        raise RuntimeError("the cluster has no active controller before the fault")
    if scenario == "leader-kill":
        leaders = list((await cluster.leaders(topic)).values())
        victims = [max((n for n in cluster.nodes if n != controller), key=leaders.count)]
        down_s = settings.node_down_s
    elif scenario == "controller-kill":
        victims, down_s = [controller], settings.node_down_s
    else:  # quorum-loss: the controller and one more
        victims, down_s = [controller, next(n for n in cluster.nodes if n != controller)], settings.outage_s
    leading = sum(1 for leader in (await cluster.leaders(topic)).values() if leader in victims)
    log(f"[{scenario}] kill -9 node(s) {victims} (controller {controller}, {leading} of the topic's partitions led)")
    killed = time.monotonic()
    for node in victims:
        await run(cluster.kill_node, node)
    if scenario == "controller-kill":  # the quorum elects another leader: proof the right node went
        await until(lambda: cluster.controller() not in (None, controller), max(down_s, 20.0),
                    f"node {controller} was killed but no other node took over as controller")
        log(f"[{scenario}] node {cluster.controller()} leads the quorum {time.monotonic() - killed:.1f} s after the kill")
    await asyncio.sleep(max(0.0, killed + down_s - time.monotonic()))
    for node in victims:
        await run(cluster.start_node, node)
    log(f"[{scenario}] node(s) back, in sync after {await cluster.wait_in_sync():.1f} s more")


def bridge_env(kafka: Broker | Cluster, topic: str, settings: DrillSettings) -> dict[str, str]:
    return {**kafka.bridge_env(), "BRIDGE_TOPIC": topic, "BRIDGE_SERVICE_TOKENS": TOKEN,
            "BRIDGE_CREATE_TOPICS": "true", "BRIDGE_TOPIC_PARTITIONS": str(settings.partitions),
            "BRIDGE_LOG_LEVEL": "warning", **settings.bridge_env}


async def run_drill(scenario: str, kafka: Broker | Cluster, tls: Path, workdir: Path, settings: DrillSettings,
                    log: Callable[[str], None] = print) -> DrillResult:
    """One scenario against `kafka` (running, left running) with bridges of its own."""
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; choose from {', '.join(SCENARIOS)}")
    if (scenario in CLUSTER_SCENARIOS) != isinstance(kafka, Cluster):
        raise ValueError(f"{scenario} runs against a {'cluster' if scenario in CLUSTER_SCENARIOS else 'single broker'}")
    topic = f"drill.{scenario}.{uuid.uuid4().hex[:8]}"
    env = bridge_env(kafka, topic, settings)
    if scenario in replica_drills.SCENARIOS:
        spools = replica_drills.spool_dirs(scenario, str(workdir / f"spool-{topic}"), settings.replicas)
    else:
        spools = [str(workdir / f"spool-{topic}-{n}") for n in range(2 if scenario == "two-replicas" else 1)]
    bridges = [BridgeProcess({**env, "BRIDGE_SPOOL_DIR": spool} if scenario in SPOOLED else env, tls, workdir)
               for spool in spools]
    router = replica_drills.AgentRouter(bridges) if scenario in replica_drills.SCENARIOS else None
    balancer = LoadBalancer(bridges, workdir) if len(bridges) > 1 and router is None else None
    for bridge in bridges:
        await asyncio.to_thread(bridge.start)
    if balancer is not None:
        await asyncio.to_thread(balancer.start)
    ledger = Ledger(workdir / f"ledger-{scenario}.jsonl")
    bound = (settings.duration_s + settings.outage_s + settings.long_outage_s + settings.pause_s
             + 3 * settings.node_down_s + 300)
    simulator = Simulator(SimSettings(
        url=(balancer or bridges[0]).url, agents=settings.agents, cafile=str(tls / "ca.pem"), token=TOKEN,
        duration_s=bound,  # a bound; stop() ends it
        retry_interval_s=settings.retry_interval_s, timeout_s=settings.timeout_s,
        signout_after_s=settings.signout_after_s, think_s=settings.think_s, drain_s=settings.drain_s,
    ), ledger, route=router.url if router is not None else None)
    load = asyncio.create_task(simulator.run(), name=f"gateway-{scenario}")
    watch = ReadinessWatch(bridges)
    readiness = asyncio.create_task(watch.run(), name=f"readiness-{scenario}")
    try:
        started = time.monotonic()
        await until(lambda: simulator.pushes_acked > 0 or load.done(), FIRST_ACK_TIMEOUT_S,
                    f"no push acknowledged within {FIRST_ACK_TIMEOUT_S:.0f} s of starting the load")
        await sleep_or_end(load, started + settings.fault_at * settings.duration_s - time.monotonic())
        log(f"[{scenario}] fault after {time.monotonic() - started:.1f} s of load, "
            f"{simulator.pushes_acked} pushes acknowledged so far")
        ledger.mark("fault")
        fault_started = time.monotonic()
        if router is not None:
            await replica_drills.inject(kafka, router, settings.long_outage_s, settings.return_after_s,
                                        lambda line: log(f"[{scenario}] {line}"))
        else:
            await inject(scenario, kafka, bridges[0], settings, topic, log)
        fault_s = time.monotonic() - fault_started
        ledger.mark(RESTORED)
        log(f"[{scenario}] restored after {fault_s:.1f} s")
        await sleep_or_end(load, max(started + settings.duration_s, time.monotonic() + settings.after_s)
                           - time.monotonic())
        simulator.stop()
        summary = await load
        if scenario in SPOOLED:
            log(f"[{scenario}] spools empty {await until_drained(bridges):.1f} s after the load ended")
    finally:
        for task in (load, readiness):
            if not task.done():
                task.cancel()
        await asyncio.gather(load, readiness, return_exceptions=True)
        ledger.close()
        if balancer is not None:
            await asyncio.to_thread(balancer.stop)
        for bridge in bridges:
            await asyncio.to_thread(bridge.stop)
    log(f"[{scenario}] gateway: {summary.line()}")
    records = await read_topics(kafka.client_options(), [topic])
    figures = compare(ledger, records)
    if scenario == "two-replicas":
        figures.restored_order_violations = compare(ledger, sorted(records, key=receipt_order)).order_violations
    return DrillResult(scenario, figures, summary, topic, fault_s, watch.not_ready_s,
                       sum(len(b.log().splitlines()) for b in bridges))


def receipt_order(record: Seen) -> tuple:
    """How a consumer restores an agent's order across replicas: by receipt time, then position."""
    return record.topic, record.agent or "", record.received or "", record.push_index or 0


@dataclass
class ReadinessWatch:
    """Polls every running bridge's /readyz until cancelled, adding up how long any said not ready
    (a bridge that is down, as in bridge-kill, does not answer and is not counted)."""

    bridges: list[BridgeProcess]
    poll_s: float = 0.25
    not_ready_s: float = 0.0

    async def run(self) -> None:
        while True:
            answers = await asyncio.gather(*(asyncio.to_thread(b.readiness) for b in self.bridges))
            if any(a and a.get("status") != "ready" for a in answers):
                self.not_ready_s += self.poll_s
            await asyncio.sleep(self.poll_s)


async def until_drained(bridges: list[BridgeProcess], timeout_s: float = DRAIN_TIMEOUT_S) -> float:
    """Wait until every bridge reports mode "direct" (its spool delivered) and no hold or adopted
    slot; seconds it took."""
    started = time.monotonic()

    def delivered(info: dict) -> bool:
        return info.get("mode") == "direct" and not {"holding", "adopted"} & set(info.get("spool", {}))

    for bridge in bridges:
        while not delivered(await asyncio.to_thread(bridge.readiness)):
            if time.monotonic() - started > timeout_s:
                raise RuntimeError(f"spool of {bridge.url} not drained within {timeout_s:.0f} s: "
                                   f"{await asyncio.to_thread(bridge.readiness)}")
            await asyncio.sleep(0.5)
    return time.monotonic() - started


async def until(condition: Callable[[], bool], timeout_s: float, message: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(message)
        await asyncio.sleep(0.1)


async def sleep_or_end(task: Awaitable, seconds: float) -> None:
    """Sleep, but wake up (and surface its error) if the load task ends early."""
    if seconds > 0:
        await asyncio.wait([task], timeout=seconds)


# -- command line --------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, DrillSettings]:
    parser = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__.split("\n\n")[0],
                                     epilog="Scenarios: " + ", ".join(SCENARIOS) + "; or the groups broker, "
                                            "cluster, all")
    parser.add_argument("--agents", type=int, default=500)
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of load per scenario")
    parser.add_argument("--scenarios", default="broker", help="comma-separated scenarios or groups")
    parser.add_argument("--fault-at", type=float, default=0.3, help="fraction of --duration before the fault")
    parser.add_argument("--after", type=float, default=30.0, help="at least this many seconds of load after the fault")
    parser.add_argument("--retry-interval", type=float, default=10.0, help="the gateway's retry interval (s)")
    parser.add_argument("--timeout", type=float, default=8.0, help="the gateway's push timeout (s)")
    parser.add_argument("--signout-after", type=float, default=120.0, help="the gateway's failure limit (s)")
    parser.add_argument("--think", type=pair, default=(0.5, 2.5), help="MIN,MAX seconds between an agent's bursts")
    parser.add_argument("--drain", type=float, default=60.0, help="seconds to push queued events after the load")
    parser.add_argument("--pause", type=float, default=8.0, help="broker-pause: seconds the broker stays frozen")
    parser.add_argument("--outage", type=float, default=45.0,
                        help="broker-outage, quorum-loss: seconds the broker(s) stay dead")
    parser.add_argument("--long-outage", type=float, default=600.0,
                        help="long-outage, two-replicas: seconds the broker stays dead")
    parser.add_argument("--node-down", type=float, default=30.0,
                        help="leader-kill, controller-kill: seconds the killed node stays dead")
    parser.add_argument("--replicas", type=int, default=3, help="replica-loss: bridges behind the router")
    parser.add_argument("--return-after", type=float, default=30.0,
                        help="replica-loss: seconds after Kafka is back until the killed replica returns")
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument("--bridge-env", action="append", default=[], metavar="BRIDGE_X=VALUE",
                        help="extra bridge setting, e.g. BRIDGE_ATOMIC_PUSHES=true (repeatable)")
    parser.add_argument("--workdir", type=Path, help="keep broker data, ledgers and logs here (default: a temporary "
                                                     "directory, removed when every scenario passed)")
    args = parser.parse_args(argv)
    extra = dict(item.split("=", 1) for item in args.bridge_env)
    settings = DrillSettings(agents=args.agents, duration_s=args.duration, fault_at=args.fault_at,
                             after_s=args.after, retry_interval_s=args.retry_interval, timeout_s=args.timeout,
                             signout_after_s=args.signout_after, think_s=args.think, drain_s=args.drain,
                             pause_s=args.pause, outage_s=args.outage, long_outage_s=args.long_outage,
                             node_down_s=args.node_down, replicas=args.replicas, return_after_s=args.return_after,
                             partitions=args.partitions, bridge_env=extra)
    return args, settings


def expand(names: str) -> list[str]:
    groups = {"broker": BROKER_SCENARIOS, "cluster": CLUSTER_SCENARIOS, "all": SCENARIOS}
    return [s for name in names.split(",") if name.strip() for s in groups.get(name.strip(), (name.strip(),))]


async def drills(scenarios: list[str], workdir: Path, settings: DrillSettings) -> list[DrillResult]:
    """Each scenario in turn, on a single broker or a three-node cluster started for them here."""
    tls = make_tls(workdir / "tls")
    broker = Broker(workdir / "kafka", tls) if set(scenarios) & set(BROKER_SCENARIOS) else None
    cluster = Cluster(workdir / "kafka-cluster", tls) if set(scenarios) & set(CLUSTER_SCENARIOS) else None
    results = []
    try:
        for kafka in (broker, cluster):
            if kafka is not None:
                started = time.monotonic()
                await asyncio.to_thread(kafka.start)
                print(f"{type(kafka).__name__.lower()} started in {time.monotonic() - started:.1f} s", flush=True)
        for scenario in scenarios:
            kafka = cluster if scenario in CLUSTER_SCENARIOS else broker
            result = await run_drill(scenario, kafka, tls, workdir, settings)
            print(result.line(), flush=True)
            if not result.ok:
                print(result.figures.details(), flush=True)
            results.append(result)
    finally:
        for kafka in (broker, cluster):
            if kafka is not None:
                await asyncio.to_thread(kafka.kill)
    return results


def summary_line(result: DrillResult) -> str:
    return f"  {'PASS' if result.ok else 'FAIL'} {result.line()}"


def main(argv: list[str] | None = None) -> int:
    args, settings = parse_args(argv)
    scenarios = expand(args.scenarios)
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        print(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}", file=sys.stderr)
        return 2
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cc-bridge-drills-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"fault drills: {len(scenarios)} scenario(s), {settings.agents} agents, {settings.duration_s:g} s of load "
          f"each, retry every {settings.retry_interval_s:g} s; work directory {workdir}", flush=True)
    results: list[DrillResult] = []
    try:
        results = asyncio.run(drills(scenarios, workdir, settings))
    finally:
        passed = len(results) == len(scenarios) and all(r.ok for r in results)
        print("summary:")
        for r in results:
            print(summary_line(r))
        for scenario in scenarios[len(results):]:
            print(f"  NOT RUN {scenario}")
        if passed and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"ledgers, bridge logs and broker data kept in {workdir}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
