"""Prometheus metrics of one bridge process. Label values come from small fixed sets (retcodes,
refusal reasons, configured topics, thresholds): never a workNo, a Guid or anything a client chooses."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .connections import CUT_REASONS, PHASES

if TYPE_CHECKING:
    from .connections import Connections
    from .risk import AgentRisk
    from .spool import AdoptedSlot, OwnSlot

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
RISK_THRESHOLDS_S = (30, 60)
QUARANTINE_REASONS = ("body", "too_large", "content_type", "events")
AFFINITY_MISSES = ("no_key", "other_agent")
DISK_FAILURES = ("no_space", "io_error", "read_only", "stalled", "other")


class Metrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.pushes = Counter("bridge_pushes", "Pushes answered, by retcode.", ["retcode"], registry=registry)
        self.rejected = Counter("bridge_pushes_rejected", "Pushes refused, by reason.", ["reason"],
                                registry=registry)
        self.quarantined = Counter("bridge_quarantined_pushes",
                                   "Malformed pushes answered \"0\" and kept in the dead-letter topic, by reason.",
                                   ["reason"], registry=registry)
        self.events = Counter("bridge_events_published", "Events acknowledged by Kafka, by topic.", ["topic"],
                              registry=registry)
        self.dead_letters = Counter("bridge_dead_letters", "Malformed pushes kept in the dead-letter topic.",
                                    registry=registry)
        self.push_seconds = Histogram("bridge_push_duration_seconds", "Time from request to answer.",
                                      buckets=LATENCY_BUCKETS, registry=registry)
        self.publish_seconds = Histogram("bridge_kafka_publish_duration_seconds",
                                         "Time from the first append to Kafka's acknowledgement of a push.",
                                         buckets=LATENCY_BUCKETS, registry=registry)
        self.inflight = Gauge("bridge_inflight_pushes", "Pushes being kept now: received whole, not yet answered.",
                              registry=registry)
        self.kafka_connected = Gauge("bridge_kafka_connected",
                                     "1 while the last Kafka health check succeeded, else 0.", registry=registry)
        self.spooled = Counter("bridge_spooled_pushes", "Pushes kept in the outage spool.", registry=registry)
        self.drained = Counter("bridge_drained_pushes", "Spooled pushes delivered to Kafka.", registry=registry)
        self.drain_errors = Counter("bridge_drain_errors", "Attempts to deliver spooled pushes that failed.",
                                    registry=registry)
        self.spool_errors = Counter("bridge_spool_errors",
                                    "Pushes the spool could not keep (full, disk error), answered 503.",
                                    registry=registry)
        self.spool_disk_failures = Counter(
            "bridge_spool_disk_failures", "Spool writes that failed or took longer than BRIDGE_SPOOL_APPEND_TIMEOUT_S, by "
            "kind (no_space, io_error, read_only, stalled, other); each makes the spool refuse pushes until a probe "
            "write succeeds.", ["kind"], registry=registry)
        for kind in DISK_FAILURES:
            self.spool_disk_failures.labels(kind)
        self.hold_waits_given_up = Counter(
            "bridge_spool_hold_waits_given_up", "Slots a hold stopped waiting for because they delivered nothing for "
            "2 minutes while Kafka was usable (unreadable, or nobody can adopt them): order across replicas is not "
            "kept for the agents that moved from them (the log names the slots).", registry=registry)
        self.spool_corrupt = Counter("bridge_spool_corrupt_entries",
                                     "Damaged spool entries moved aside or left out.", registry=registry)
        self.spool_refused = Counter("bridge_spool_refused_entries",
                                     "Spooled pushes Kafka refuses for good (too large), kept in the spool's "
                                     "refused/ directory.", registry=registry)
        self.agents_failing = Gauge("bridge_agents_failing",
                                    "Agents whose pushes have been failing for longer than `over`.", ["over"],
                                    registry=registry)
        self.affinity_misses = Counter(
            "bridge_affinity_misses", "Pushes the agent-affine router did not route by their agent: no routing key "
            "(no_key) or another agent's (other_agent). Counted when BRIDGE_ROUTER_KEY_HEADER is set.", ["reason"],
            registry=registry)
        self.url_agent_mismatches = Counter(
            "bridge_url_agent_mismatches", "Pushes whose callback URL names another agent than their body's workNo.",
            registry=registry)
        self.lines_held_back = Counter(
            "bridge_log_lines_held_back", "Log lines about refused or misrouted pushes left out to bound the log's "
            "rate, by refusal reason or routing problem; each is still counted in its own metric.", ["reason"],
            registry=registry)
        self.secret_reloads = Counter(
            "bridge_secret_reloads", "New versions of secret files (tokens, tls, kafka_tls, kafka_sasl) put in "
            "service (ok) or refused, the last good version kept (failed).", ["secret", "result"], registry=registry)
        self.secret_loaded = Gauge("bridge_secret_loaded_timestamp_seconds",
                                   "When the version of a secret file in service was read (Unix time).", ["secret"],
                                   registry=registry)
        self.secret_problem = Gauge(
            "bridge_secret_file_problem", "1 while a secret's newest files cannot be used (the last good version "
            "serves), else 0.", ["secret"], registry=registry)
        self.ok = self.pushes.labels("0")
        for miss in AFFINITY_MISSES:
            self.affinity_misses.labels(miss)
        for reason in QUARANTINE_REASONS:  # exported as 0 from the start, so rate() and alerts see them
            self.quarantined.labels(reason)

    def watch_spool(self, spool: OwnSlot | None, adopted: Callable[[], list[AdoptedSlot]] = list) -> None:
        """Gauges read from the spool (and the slots this replica delivers for replicas that are
        gone, `adopted`) at each scrape (all 0 when the bridge runs without one)."""
        def gauge(name: str, text: str, read: Callable[[OwnSlot], float]) -> None:
            Gauge(name, text, registry=self.registry).set_function(lambda: 0 if spool is None else read(spool))

        gauge("bridge_spool_bytes", "Bytes of spool files on disk.", lambda s: s.bytes)
        gauge("bridge_spool_entries", "Pushes in the spool not yet delivered to Kafka.", lambda s: s.entries)
        gauge("bridge_spool_accepting", "1 while the spool can keep pushes, else 0.", lambda s: int(s.accepting))
        Gauge("bridge_spool_volume_failing", "1 while writes to the spool's volume fail or stall (until a probe "
              "write succeeds), else 0.", ["directory"], registry=self.registry).labels(
            "" if spool is None else str(spool.directory)).set_function(
            lambda: 0 if spool is None else int(bool(spool.failing)))
        gauge("bridge_spool_oldest_age_seconds", "Age of the oldest push not yet delivered from the spool.",
              lambda s: 0 if s.oldest_ms is None else max(0.0, time.time() - s.oldest_ms / 1000))
        gauge("bridge_spool_hold_age_seconds", "Age of the oldest hold: pushes kept back until another slot of the "
              "spool volume delivered older pushes of agents that moved (0: none).",
              lambda s: max([s.hold_age_s(), *(a.hold_age_s() for a in adopted())]))
        gauge("bridge_spool_held_pushes", "Pushes accepted since the oldest hold began, kept back by it.",
              lambda s: s.held_pushes)
        gauge("bridge_spool_adopted_slots", "Slots left behind by replicas that are gone, delivered by this one.",
              lambda s: len(adopted()))
        gauge("bridge_spool_adopted_entries", "Pushes not yet delivered in the slots this replica adopted.",
              lambda s: sum(a.entries for a in adopted()))
        gauge("bridge_spool_orphaned_slots", "Slots of the spool volume with undelivered pushes and no process "
              "delivering them, at the last look (about every 0.5 s).", lambda s: len(s.orphaned))

    def watch_risk(self, risk: AgentRisk) -> None:
        for seconds in RISK_THRESHOLDS_S:
            self.agents_failing.labels(f"{seconds}s").set_function(partial(risk.failing_longer_than, seconds))

    def watch_connections(self, *tables: Connections) -> None:
        """Connection figures read from the ports' tables at each scrape (the tables keep plain counts)."""
        self.registry.register(ConnectionFigures(tables))


class ConnectionFigures(Collector):
    """bridge_connections_open{port,phase}, bridge_connections_accepted_total{port} and
    bridge_connections_cut_total{port,reason}, from the connection tables of the ports."""

    def __init__(self, tables: tuple[Connections, ...]) -> None:
        self._tables = tables

    def collect(self) -> Iterator[Metric]:
        opened = GaugeMetricFamily("bridge_connections_open", "Open connections, by port and phase.",
                                   labels=["port", "phase"])
        accepted = CounterMetricFamily("bridge_connections_accepted", "Connections accepted, by port.",
                                       labels=["port"])
        cut = CounterMetricFamily("bridge_connections_cut", "Connections the bridge closed (a deadline passed, or "
                                  "room was made above the bound) or refused (above the bound), by port and reason.",
                                  labels=["port", "reason"])
        for table in self._tables:
            for number, phase in enumerate(PHASES):
                opened.add_metric([table.port, phase], table.count(number))
            accepted.add_metric([table.port], table.accepted)
            for reason in CUT_REASONS:
                cut.add_metric([table.port, reason], table.cuts[reason])
        yield from (opened, accepted, cut)
