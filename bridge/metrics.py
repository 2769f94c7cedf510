"""Prometheus metrics of one bridge process. Label values come from small fixed sets (retcodes,
refusal reasons, configured topics): never a workNo, a Guid or anything a client chooses."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.pushes = Counter("bridge_pushes", "Pushes answered, by retcode.", ["retcode"], registry=registry)
        self.rejected = Counter("bridge_pushes_rejected", "Pushes refused, by reason.", ["reason"],
                                registry=registry)
        self.events = Counter("bridge_events_published", "Events acknowledged by Kafka, by topic.", ["topic"],
                              registry=registry)
        self.dead_letters = Counter("bridge_dead_letters", "Refused pushes kept in the dead-letter topic.",
                                    registry=registry)
        self.push_seconds = Histogram("bridge_push_duration_seconds", "Time from request to answer.",
                                      buckets=LATENCY_BUCKETS, registry=registry)
        self.publish_seconds = Histogram("bridge_kafka_publish_duration_seconds",
                                         "Time from the first append to Kafka's acknowledgement of a push.",
                                         buckets=LATENCY_BUCKETS, registry=registry)
        self.inflight = Gauge("bridge_inflight_pushes", "Pushes being processed now.", registry=registry)
        self.kafka_connected = Gauge("bridge_kafka_connected",
                                     "1 while the last Kafka health check succeeded, else 0.", registry=registry)
        self.ok = self.pushes.labels("0")
