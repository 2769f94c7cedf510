"""One benchmark run's world, and one load at a time in it.

`environment()` starts what a run needs (the Go programs built if need be, TLS material, the broker
and its topic, the push bodies, the servers' settings) and stops it on the way out. `Bench.load`
points the compiled load generator (bench/loadgen) at a Target and returns its figures with the
CPU every process used over the measured window; `Bench.producer_ceiling` does the same for the
producer ceiling, which has no HTTP side.
"""
from __future__ import annotations

import asyncio
import json
import os
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import ROOT, Broker, free_port, make_tls

from .events import write_bodies
from .plan import GUID, PARTITIONS, TOKEN, TOPIC, Plan
from .processes import NCPU, GoReceiver, Group, Target, Usage, go_binary, server_affinity, stderr_lines

LOADGEN_SRC = ROOT / "bench" / "loadgen"
GOREF_SRC = ROOT / "bench" / "goref"


@dataclass
class Bench:
    plan: Plan
    loadgen: Path
    goref: Path | str  # the Go reference receiver's binary, or why it could not be built
    tls: Path
    conns: int
    workers: int
    env: dict[str, str]
    logs: Path
    bodies: dict[tuple[int, int], Path]  # (events per push, agents) -> file
    broker: Broker
    running: list = field(default_factory=list)  # servers started, stopped at the end whatever happens

    @property
    def broker_pids(self) -> list[int]:
        """The broker's process (none while it is stopped): read when a load starts, so a restart
        needs no bookkeeping."""
        pid = self.broker.pid
        return [] if pid is None else [pid]

    def group(self, module: str, root: Path = ROOT) -> Group:
        """`workers` processes of `module`, run from the checkout at `root`."""
        return Group(module, self.env, self.tls, self.logs, self.workers, self.running, root)

    def go_reference(self) -> GoReceiver:
        assert isinstance(self.goref, Path)
        return GoReceiver(self.goref, self.env, self.logs, self.running)

    def load(self, target: Target, body_file: Path, *, rate: float | None = None,
             window_s: float | None = None, conns: int | None = None, cover_up_to_s: float | None = None,
             also: dict[str, list[int]] | None = None) -> dict:
        """Run the generator against `target`; return its figures plus the CPU used over its window.

        `cover_up_to_s`: let the window grow (up to that long) until every body was sent once.
        `also`: other processes whose CPU to report, as `<name>_cpu` (a router, say)."""
        window_s = window_s or self.plan.window_s
        warmup_s = self.plan.warmup_s
        command = [str(self.loadgen), "-cacert", str(self.tls / "ca.pem"),
                   "-H", "Content-Type: application/json; charset=UTF-8", "-H", f"Guid: {GUID}",
                   "-H", f"service_token: {TOKEN}", "-bodies", str(body_file),
                   "-conns", str(conns or self.conns), "-warmup", f"{warmup_s}s", "-duration", f"{window_s}s"]
        for url in target.urls:
            command += ["-url", url]
        if rate:
            command += ["-rate", f"{rate:.1f}"]
        if cover_up_to_s:
            command += ["-cover", "-max-duration", f"{cover_up_to_s}s"]
        generator = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        usage = Usage({"server": target.pids, "broker": self.broker_pids, **(also or {})})
        used: dict = {}
        other_lines = []
        # The generator announces its window on stderr; sample the other processes' CPU then.
        deadline = time.monotonic() + warmup_s + max(window_s, cover_up_to_s or 0) + 60
        for line in stderr_lines(generator, deadline):
            if line == "window start":
                usage.start()
            elif line == "window end" and usage.started:
                used = usage.stop()
                break
            else:
                other_lines.append(line)
        try:
            out, err = generator.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            generator.kill()
            out, err = generator.communicate()
        if generator.returncode != 0 or not used:
            problem = "\n".join(other_lines) + err.decode(errors="replace")
            raise RuntimeError(f"load generator failed ({generator.returncode}): {problem[-2000:]}")
        result = json.loads(out)
        result.update(used, gen_cpu=result["cpu_cores"], **target.memory())
        result["other_cpu"] = max(0.0, used["machine_cpu"] - result["gen_cpu"]
                                  - sum(v for k, v in used.items() if k != "machine_cpu"))
        return result

    def producer_ceiling(self, body_file: Path, rate: float | None = None, window_s: float | None = None) -> dict:
        """Run N bench.producer_ceiling processes at once and add their figures up."""
        window_s = window_s or self.plan.window_s
        per_process = max(1, self.conns // self.workers)
        env = {**self.env, "BRIDGE_PORT": str(free_port()), "BRIDGE_MANAGEMENT_PORT": str(free_port())}
        command = [sys.executable, "-m", "bench.producer_ceiling", "--bodies", str(body_file),
                   "--concurrency", str(per_process), "--warmup", str(self.plan.warmup_s),
                   "--duration", str(window_s)]
        if rate:
            command += ["--rate", f"{rate / self.workers:.1f}"]
        procs = [subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  preexec_fn=server_affinity)
                 for _ in range(self.workers)]
        # Each process says "started" once connected, when its warm-up begins.
        deadline = time.monotonic() + 60
        for proc in procs:
            with selectors.DefaultSelector() as selector:
                selector.register(proc.stdout, selectors.EVENT_READ)
                if not selector.select(max(0.0, deadline - time.monotonic())):
                    break
                proc.stdout.readline()
        usage = Usage({"server": [p.pid for p in procs], "broker": self.broker_pids})
        time.sleep(self.plan.warmup_s)
        usage.start()
        time.sleep(window_s)
        used = usage.stop()
        results = []
        for proc in procs:
            try:
                out, err = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
            if proc.returncode != 0:
                raise RuntimeError(f"producer ceiling failed ({proc.returncode}): {err.decode()[-2000:]}")
            results.append(json.loads(out.strip().splitlines()[-1]))
        total = {key: sum(r[key] for r in results) for key in ("pushes", "events", "errors", "cpu_s")}
        # One process: its percentiles; several: the worst of each (they cannot be merged exactly).
        latency = {key: max(r["latency_ms"].get(key, 0) for r in results) for key in results[0]["latency_ms"]}
        total.update(used, ok_per_s=total["pushes"] / window_s, events_per_s=total["events"] / window_s,
                     gen_cpu=None, server_cpu=total["cpu_s"] / window_s, latency_ms=latency, rss_mb=None,
                     rate=rate)
        total["other_cpu"] = max(0.0, used["machine_cpu"] - total["server_cpu"] - used["broker_cpu"])
        return total


async def create_topic(bootstrap: str, tls: Path) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.helpers import create_ssl_context

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, security_protocol="SSL",
                                ssl_context=create_ssl_context(cafile=tls / "ca.pem", certfile=tls / "server.pem",
                                                               keyfile=tls / "server.key"))
    await admin.start()
    try:
        await admin.create_topics([NewTopic(TOPIC, PARTITIONS, 1)])
    finally:
        await admin.close()


def build_programs() -> tuple[Path, Path | str]:
    """The load generator (needed) and the Go reference receiver (its rows are left out, with the
    reason, if it cannot be built: it needs Go 1.26 and, once, the Go module proxy)."""
    try:
        loadgen = go_binary(LOADGEN_SRC)
    except RuntimeError as exc:
        raise SystemExit(f"bench: {exc}") from None
    try:
        return loadgen, go_binary(GOREF_SRC)
    except RuntimeError as exc:
        print(f"bench: the Go reference receiver is left out: {exc}", flush=True)
        return loadgen, str(exc).splitlines()[0]


@contextmanager
def environment(plan: Plan, conns: int, workers: int, extra: dict[str, str], keep: bool) -> Iterator[Bench]:
    """Everything a run needs, started here and stopped again on the way out: the Go programs
    (built if need be), TLS material, the broker and its topic, the push bodies of `plan`, the
    servers' settings (plus `extra`). The broker is `bench.broker`."""
    loadgen, goref = build_programs()
    workdir = Path(tempfile.mkdtemp(prefix="cc-bridge-bench-"))
    tls = make_tls(workdir / "tls")
    broker = Broker(workdir / "kafka", tls)
    bench: Bench | None = None
    try:
        print("bench: starting Kafka ...", flush=True)
        broker.start()
        asyncio.run(create_topic(broker.bootstrap, tls))
        bodies_dir = workdir / "bodies"
        bodies_dir.mkdir()
        bodies = {}
        for events, agents in {*((e, plan.pool_agents) for e in plan.mixes), *((5, n) for n in plan.agent_counts)}:
            bodies[(events, agents)] = bodies_dir / f"e{events}-a{agents}.jsonl"
            write_bodies(bodies[(events, agents)], agents, events)
        env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
        env.update(
            broker.bridge_env(), BRIDGE_TLS_CERTFILE=str(tls / "server.pem"),
            BRIDGE_TLS_KEYFILE=str(tls / "server.key"), BRIDGE_HOST="127.0.0.1", BRIDGE_TOPIC=TOPIC,
            BRIDGE_SERVICE_TOKENS=TOKEN, BRIDGE_CREATE_TOPICS="true", BRIDGE_TOPIC_PARTITIONS=str(PARTITIONS),
        )
        env.update(extra)
        logs = workdir / "logs"
        logs.mkdir()
        bench = Bench(plan, loadgen, goref, tls, conns, workers, env, logs, bodies, broker)
        yield bench
    finally:
        if bench is not None:
            for server in bench.running:
                server.stop()
        broker.stop()
        if keep:
            print(f"bench: logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def machine(quick: bool, loadavg: str, started: float) -> dict:
    """The machine and the run, for the report's heading and the JSON."""
    return {"quick": quick, "cpus": NCPU, "loadavg_before": loadavg,
            "loadavg_after": " ".join(f"{v:.2f}" for v in os.getloadavg()),
            "python": sys.version.split()[0], "seconds": round(time.monotonic() - started)}
