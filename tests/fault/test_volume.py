"""A sick spool volume under the gateway's real timings, on a real file system of its own: one
bridge spooling through a Kafka outage while its volume is frozen for 20 s (fsfreeze: every write
waits, as on a hung network disk), then full (ENOSPC) for 10 s; it must take pushes again by itself
once the volume is well after each. Then the kernel turns the volume read-only after an ext4 error
(10 s); that is over only once the volume is checked and mounted again, so the bridge is stopped,
the volume repaired, the bridge started again; Kafka comes back after that.

What must hold: no push waits for an answer as long as 10 s (the bridge refuses within its append
deadline instead), nobody is signed out, the refusals are steady while the volume is sick (no
flapping between ready and not ready), and every event answered "0" is in Kafka, in order per agent.
"""
from __future__ import annotations

import asyncio
import os
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from bench import TOKEN
from bench.faults import until_drained
from bench.simulate import Ledger, SimSettings, Simulator
from bench.verify import compare, read_topics
from tests.support import BridgeProcess, Broker, volumes

pytestmark = pytest.mark.fault

AGENTS = 40
ANSWER_BOUND_S = 10.0  # no push may go unanswered this long
SICK_PHASES = ("frozen", "full", "read-only")


def metrics_of(bridge: BridgeProcess) -> str:
    with urllib.request.urlopen(bridge.management_url + "/metrics", timeout=5) as response:
        return response.read().decode()


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


async def ready_within(bridge: BridgeProcess, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while (await asyncio.to_thread(bridge.readiness)).get("status") != "ready":
        assert time.monotonic() < deadline, f"not taking pushes {what}"
        await asyncio.sleep(0.2)


class Readiness:
    """Polls /readyz every 0.2 s, keeping (phase, status) in order."""

    def __init__(self, bridge: BridgeProcess) -> None:
        self.bridge = bridge
        self.phase = "healthy"
        self.seen: list[tuple[str, str]] = []

    async def run(self) -> None:
        while True:
            answer = await asyncio.to_thread(self.bridge.readiness)
            self.seen.append((self.phase, answer.get("status", "no answer")))
            await asyncio.sleep(0.2)

    def flapped(self, phase: str) -> bool:
        """Whether /readyz said ready again during `phase` after it had said not ready."""
        statuses = [status for p, status in self.seen if p == phase]
        first_out = next((i for i, s in enumerate(statuses) if s != "ready"), len(statuses))
        return "ready" in statuses[first_out:]


@pytest.fixture
def volume(tmp_path):
    why = volumes.available()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the volume faults, but: {why}")
        pytest.skip(why)
    with volumes.LoopVolume(tmp_path / "loop") as made:
        yield made


async def test_a_frozen_then_full_then_read_only_volume_signs_nobody_out_and_loses_nothing(
        volume, disposable_kafka: Broker, tls_dir: Path, tmp_path: Path) -> None:
    topic = f"drill.volume.{uuid.uuid4().hex[:8]}"
    env = {**disposable_kafka.bridge_env(), "BRIDGE_TOPIC": topic, "BRIDGE_SERVICE_TOKENS": TOKEN,
           "BRIDGE_CREATE_TOPICS": "true", "BRIDGE_TOPIC_PARTITIONS": "6", "BRIDGE_LOG_LEVEL": "warning",
           "BRIDGE_SPOOL_DIR": str(volume.mount / "spool")}
    bridge = BridgeProcess(env, tls_dir, tmp_path)
    await asyncio.to_thread(bridge.start)
    ledger = Ledger(tmp_path / "ledger.jsonl")
    simulator = Simulator(SimSettings(url=bridge.url, agents=AGENTS, cafile=str(tls_dir / "ca.pem"), token=TOKEN,
                                      duration_s=600, retry_interval_s=10.0, timeout_s=ANSWER_BOUND_S,
                                      signout_after_s=120.0, drain_s=60.0, connections=8), ledger)
    load = asyncio.create_task(simulator.run())
    readiness = Readiness(bridge)
    watching = asyncio.create_task(readiness.run())
    try:
        await asyncio.sleep(5)
        ledger.mark("fault")
        await asyncio.to_thread(disposable_kafka.kill)
        await asyncio.sleep(5)  # the outage: pushes go to the spool
        for phase, sick, well, seconds in (("frozen", volume.freeze, volume.thaw, 20),
                                           ("full", volume.fill, volume.free, 10)):
            readiness.phase = phase
            ledger.mark(phase)
            await asyncio.to_thread(sick)
            await asyncio.sleep(seconds)
            await asyncio.to_thread(well)
            readiness.phase = f"after {phase}"
            await ready_within(bridge, 10, f"10 s after the volume was {phase}")
        readiness.phase = "read-only"
        ledger.mark("read-only")
        await asyncio.to_thread(volume.break_to_read_only)
        await asyncio.sleep(10)
        failures = await asyncio.to_thread(metrics_of, bridge)
        readiness.phase = "repaired"
        ledger.mark("repair")
        await asyncio.to_thread(bridge.stop)
        await asyncio.to_thread(volume.repair)
        await asyncio.to_thread(bridge.start)
        await asyncio.sleep(5)  # spooling again
        await asyncio.to_thread(disposable_kafka.start)
        ledger.mark("restored")
        await asyncio.sleep(10)
        simulator.stop()
        summary = await load
        await until_drained([bridge])
    finally:
        volume.thaw()
        for task in (load, watching):
            task.cancel()
        await asyncio.gather(load, watching, return_exceptions=True)
        await asyncio.to_thread(bridge.stop)
        ledger.close()
    figures = compare(ledger, await read_topics(disposable_kafka.client_options(), [topic]))
    print(f"\nvolume: {summary.line()}\nvolume: {figures.line()}")
    assert summary.signed_out == summary.abandoned == 0, summary.line()
    assert summary.failures["timeout"] == 0 and max(summary.latencies) < ANSWER_BOUND_S, \
        f"a push waited {max(summary.latencies):.1f} s: {summary.line()}"
    assert sum(summary.failures.values()) > 0, "the sick volume refused nothing: the test proves nothing"
    assert figures.lost == 0 and figures.events_found == figures.events_acked, figures.details()
    assert figures.order_violations == 0 and figures.agents_out_of_order == 0, figures.details()
    for kind in ("stalled", "no_space", "read_only"):
        assert metric(failures, f'bridge_spool_disk_failures_total{{kind="{kind}"}}') > 0, f"no {kind} failure counted"
    flapping = [phase for phase in SICK_PHASES if readiness.flapped(phase)]
    assert not flapping, f"/readyz said ready again while the volume was still sick: {flapping}"
