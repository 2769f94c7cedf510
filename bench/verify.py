"""Checks Kafka against the simulator's ledger: nothing acknowledged is missing, nothing is reordered.

Reads every committed record of the given topics (isolation_level=read_committed), partition by
partition in offset order, and compares with the ledger written by bench.simulate:

- lost: events acknowledged with "0" whose (workNo, eventGenTime) is in no record. Must be 0.
- order violations: per topic and agent, records in offset order with repeated ce_id values
  dropped (a consumer's de-duplication), where eventGenTime does not increase. Must be 0.
- duplicates: records whose ce_id was already seen (expected after retries; informational).
- recovery: seconds from the last "restored" mark in the ledger (broker or bridge back) to the
  first push answered "0" after it.
- agents_failed: agents that saw at least one failed push (what the gateway notices).
- longest_failure_s: the longest run of failures one agent went through, from sending the first
  failed attempt to the "0" (or sign-out, or giving up at the end) that ended it: how long that
  agent's events waited at the gateway.
- longest_gap_s: from the "fault" mark on, the longest time in which no push of any agent was
  answered "0" (the whole load stalled), including the stretch from the mark to the first "0".

    python -m bench.verify --ledger run.jsonl --topics cc.agent.events --bootstrap 127.0.0.1:9093 \\
        --security-protocol SSL --cafile .local/tls/ca.pem --certfile .local/tls/server.pem \\
        --keyfile .local/tls/server.key
    python -m bench.verify ... --bootstrap 127.0.0.1:9095 --security-protocol SASL_SSL --cafile .local/tls/ca.pem \\
        --sasl-mechanism SCRAM-SHA-512 --sasl-username bridge --sasl-password-file password.txt

Prints one line of figures; exits 1 when something acknowledged was lost or reordered.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.helpers import create_ssl_context

from .simulate import Ledger

RESTORED = "restored"


class Seen(NamedTuple):
    """What the check needs from one record."""

    topic: str
    partition: int
    offset: int
    agent: str | None        # the record key
    ce_id: str | None
    gen_time: int | None     # the event's eventGenTime; None for records that are not simulator events
    received: str | None = None    # ce_time: when the accepting bridge received the push
    push_index: int | None = None  # ce_pushindex


@dataclass
class Figures:
    pushes_acked: int
    events_acked: int
    events_found: int        # acknowledged events present in Kafka
    lost: int
    order_violations: int
    duplicates: int
    signed_out: int
    recovery_s: float | None
    records: int = 0
    unacked_found: int = 0   # distinct events in Kafka that no "0" covered (failed pushes, cut-off retries)
    foreign: int = 0         # records that are not simulator events
    last_failure_s: float | None = None  # last failed attempt, seconds after the "restored" mark
    agents_failed: int = 0
    longest_failure_s: float = 0.0
    longest_gap_s: float | None = None
    restored_order_violations: int | None = None  # after ordering each agent's records by ce_time
    agents_out_of_order: int = 0  # agents with at least one order violation
    lost_sample: list = field(default_factory=list)
    violation_sample: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.order_violations == 0

    def line(self) -> str:
        def seconds(value: float | None) -> str:
            return "-" if value is None else f"{value:.1f}"
        return (f"pushes_acked={self.pushes_acked} events_acked={self.events_acked} "
                f"events_found={self.events_found} lost={self.lost} order_violations={self.order_violations} "
                f"duplicates={self.duplicates} signed_out={self.signed_out} "
                f"agents_failed={self.agents_failed} longest_failure_s={self.longest_failure_s:.1f} "
                f"longest_gap_s={seconds(self.longest_gap_s)} "
                f"recovery_s={seconds(self.recovery_s)} last_failure_s={seconds(self.last_failure_s)} "
                f"records={self.records} unacked_found={self.unacked_found} foreign={self.foreign}"
                + (f" agents_out_of_order={self.agents_out_of_order}" if self.order_violations else "")
                + ("" if self.restored_order_violations is None
                   else f" order_violations_by_ce_time={self.restored_order_violations}"))

    def details(self) -> str:
        """The first lost events and order violations, for a failure message."""
        parts = []
        if self.lost_sample:
            parts.append("lost (workNo, eventGenTime): " + ", ".join(map(str, self.lost_sample)))
        if self.violation_sample:
            parts.append("out of order (topic, partition, offset, workNo, eventGenTime, previous): "
                         + ", ".join(map(str, self.violation_sample)))
        return "\n".join(parts)


def compare(ledger: Ledger, records: Iterable[Seen], sample: int = 10) -> Figures:
    """The figures for `records`, which must come partition by partition in offset order."""
    acked: set[tuple[str, int]] = set()
    pushes = events = 0
    for entry in ledger.of_kind("ack"):
        pushes += 1
        events += len(entry["ids"])
        acked.update((entry["agent"], gen) for gen in entry["ids"])

    found: set[tuple[str, int]] = set()
    seen_ids: set[str] = set()
    last_gen: dict[tuple[str, str], int] = {}
    total = duplicates = violations = foreign = 0
    violation_sample = []
    out_of_order: set[str] = set()
    for record in records:
        total += 1
        if record.agent is None or record.gen_time is None:
            foreign += 1
            continue
        found.add((record.agent, record.gen_time))
        if record.ce_id is not None:
            if record.ce_id in seen_ids:
                duplicates += 1
                continue
            seen_ids.add(record.ce_id)
        stream = (record.topic, record.agent)
        previous = last_gen.get(stream)
        if previous is not None and record.gen_time <= previous:
            violations += 1
            out_of_order.add(record.agent)
            if len(violation_sample) < sample:
                violation_sample.append((record.topic, record.partition, record.offset, record.agent,
                                         record.gen_time, previous))
            continue
        last_gen[stream] = record.gen_time

    missing = acked - found
    recovery, last_failure = recovery_after_mark(ledger)
    return Figures(
        pushes_acked=pushes, events_acked=events, events_found=len(acked & found), lost=len(missing),
        order_violations=violations, duplicates=duplicates,
        signed_out=sum(1 for _ in ledger.of_kind("signout")), recovery_s=recovery, records=total,
        unacked_found=len(found - acked), foreign=foreign, last_failure_s=last_failure,
        agents_failed=len({e["agent"] for e in ledger.of_kind("fail")}),
        longest_failure_s=max((e.get("failing_s", 0.0) for e in ledger.entries
                               if e["kind"] in ("ack", "signout", "abandon")), default=0.0),
        longest_gap_s=longest_gap(ledger), lost_sample=sorted(missing)[:sample], violation_sample=violation_sample,
        agents_out_of_order=len(out_of_order),
    )


def longest_gap(ledger: Ledger, name: str = "fault") -> float | None:
    """From the first `name` mark on, the longest time with no push answered "0" (None: no mark,
    or no "0" after it)."""
    marks = [e["t"] for e in ledger.of_kind("mark") if e["name"] == name]
    if not marks:
        return None
    times = sorted(e["t"] for e in ledger.of_kind("ack") if e["t"] >= marks[0])
    if not times:
        return None
    return max(later - earlier for earlier, later in zip([marks[0], *times], times, strict=False))


def recovery_after_mark(ledger: Ledger, name: str = RESTORED) -> tuple[float | None, float | None]:
    """(first "0" after the last `name` mark, last failure after it), in seconds from the mark."""
    marks = [e["t"] for e in ledger.of_kind("mark") if e["name"] == name]
    if not marks:
        return None, None
    since = marks[-1]
    first_ack = min((e["t"] for e in ledger.of_kind("ack") if e["t"] >= since), default=None)
    last_fail = max((e["t"] for e in ledger.of_kind("fail") if e["t"] >= since), default=None)
    return (None if first_ack is None else first_ack - since,
            None if last_fail is None else last_fail - since)


def seen(record) -> Seen:
    headers = {k: v.decode(errors="replace") for k, v in record.headers}
    ce_id = headers.get("ce_id")
    agent = record.key.decode(errors="replace") if record.key is not None else None
    try:
        event = orjson.loads(record.value)
        gen_time = event.get("eventGenTime") if isinstance(event, dict) else None
    except orjson.JSONDecodeError:
        gen_time = None
    index = headers.get("ce_pushindex", "")
    return Seen(record.topic, record.partition, record.offset, agent, ce_id,
                gen_time if isinstance(gen_time, int) else None, headers.get("ce_time"),
                int(index) if index.isdigit() else None)


async def read_committed(client_options: dict, topics: list[str], timeout_s: float = 300.0,
                         start: dict[TopicPartition, int] | None = None) -> list:
    """Every committed record of `topics` (aiokafka ConsumerRecords), partition by partition, in
    offset order; with `start`, from those offsets on. Used by the checker and by the test suite."""
    consumer = AIOKafkaConsumer(**client_options, enable_auto_commit=False, isolation_level="read_committed",
                                max_partition_fetch_bytes=4 * 1048576)
    await consumer.start()
    try:
        partitions: list[TopicPartition] = []
        for _ in range(20):
            partitions = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
            if {tp.topic for tp in partitions} == set(topics):
                break
            await consumer._client.force_metadata_update()
            await asyncio.sleep(0.5)
        if {tp.topic for tp in partitions} != set(topics):
            raise RuntimeError(f"topics not found: {sorted(set(topics) - {tp.topic for tp in partitions})}")
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        for tp, offset in (start or {}).items():
            consumer.seek(tp, offset)
        end = await consumer.end_offsets(partitions)
        by_partition: dict[TopicPartition, list] = defaultdict(list)
        deadline = time.monotonic() + timeout_s
        while True:
            behind = [tp for tp in partitions if await consumer.position(tp) < end[tp]]
            if not behind:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"reading the topics took longer than {timeout_s:.0f} s; behind: {behind}")
            batch = await consumer.getmany(*behind, timeout_ms=1000)
            for tp, records in batch.items():
                by_partition[tp].extend(records)
        return [record for tp in partitions for record in by_partition[tp]]
    finally:
        await consumer.stop()


async def read_topics(client_options: dict, topics: list[str], timeout_s: float = 300.0) -> list[Seen]:
    return [seen(r) for r in await read_committed(client_options, topics, timeout_s)]


async def verify(client_options: dict, topics: list[str], ledger: Ledger) -> Figures:
    return compare(ledger, await read_topics(client_options, topics))


def client_options(args: argparse.Namespace) -> dict:
    """aiokafka options from the command line (the bridge's BRIDGE_KAFKA_* settings, as flags)."""
    protocol = args.security_protocol
    options: dict = {"bootstrap_servers": args.bootstrap, "security_protocol": protocol}
    if protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = create_ssl_context(cafile=args.cafile, certfile=args.certfile, keyfile=args.keyfile)
    sasl = (args.sasl_mechanism, args.sasl_username, args.sasl_password, args.sasl_password_file)
    if not protocol.startswith("SASL_"):
        if any(value is not None for value in sasl):
            raise SystemExit(f"--sasl-* options need --security-protocol SASL_SSL or SASL_PLAINTEXT, not {protocol}")
        return options
    if args.sasl_mechanism is None or args.sasl_username is None:
        raise SystemExit(f"{protocol} needs --sasl-mechanism and --sasl-username")
    if (args.sasl_password is None) == (args.sasl_password_file is None):
        raise SystemExit(f"{protocol} needs exactly one of --sasl-password and --sasl-password-file")
    password = args.sasl_password
    if password is None:
        password = Path(args.sasl_password_file).read_text(encoding="utf-8").rstrip("\r\n")
    options.update(sasl_mechanism=args.sasl_mechanism, sasl_plain_username=args.sasl_username,
                   sasl_plain_password=password)
    return options


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.verify", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ledger", required=True, help="JSONL ledger written by bench.simulate")
    parser.add_argument("--topics", required=True, help="comma-separated topics the bridge wrote to")
    parser.add_argument("--bootstrap", default="127.0.0.1:9093")
    parser.add_argument("--security-protocol", choices=["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"],
                        default="SSL")
    parser.add_argument("--cafile")
    parser.add_argument("--certfile")
    parser.add_argument("--keyfile")
    parser.add_argument("--sasl-mechanism", choices=["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
    parser.add_argument("--sasl-username")
    parser.add_argument("--sasl-password", help="prefer --sasl-password-file: a command line is visible to others")
    parser.add_argument("--sasl-password-file", help="file holding the password (a trailing line end is dropped)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    figures = asyncio.run(verify(client_options(args), args.topics.split(","), Ledger.load(args.ledger)))
    print(figures.line())
    if not figures.ok:
        print(figures.details(), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
