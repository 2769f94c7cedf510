"""The keeper of the one Kafka producer: connects, reconnects, and knows whether Kafka can take pushes.

A task checks every few seconds (every second while Kafka is away) that the brokers answer and every
topic exists, over a health client of its own (bridge.kafka.admin.Health); it creates missing topics when
allowed, and starts a producer once the cluster answers. It replaces the producer after any failed
batch or transaction, because the producer's sequence numbering cannot be trusted after a batch was
given up, and when the producer's metadata names only brokers that have left the cluster.

The write paths read `producer` and `ready`, ask for an early check with `check_soon()` and for a
new producer with `want_new_producer(why)` (bridge.kafka.seams.ProducerKeeper). The brokers the
producer knows are read from its `client.cluster`, which aiokafka does not publish as API (checked
by tests/unit/test_borrowed_names.py).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from .config import Settings
from .kafka.admin import Health, create_topics
from .kafka.clients import REQUEST_TIMEOUT_MS, new_producer
from .kafka.credentials import Credentials
from .kafka.errors import describe
from .metrics import Metrics

log = logging.getLogger("bridge.publisher")
CHECK_INTERVAL_HEALTHY_S = 5.0
CHECK_INTERVAL_UNHEALTHY_S = 1.0


class Supervisor:
    """`producer` is the current producer, None while there is none; `ready` says whether pushes
    can be written now, `problem` why not."""

    def __init__(self, settings: Settings, metrics: Metrics, credentials: Credentials) -> None:
        self._settings = settings
        self._metrics = metrics
        self._credentials = credentials
        self.producer: AIOKafkaProducer | None = None
        self._healthy = False
        self._problem = "Kafka is not reachable"
        self._reset_wanted = False
        self._check_now = asyncio.Event()
        self._health = Health(settings, credentials)
        self._task: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        """Kafka answered the last health check, every configured topic exists, a producer is up."""
        return self._healthy and self.producer is not None

    @property
    def problem(self) -> str:
        """Why Kafka cannot take pushes now ("" when it can)."""
        return "" if self.ready else self._problem

    @property
    def replacing(self) -> bool:
        """A new producer was asked for and is not there yet."""
        return self._reset_wanted

    def check_soon(self) -> None:
        """Check the cluster now rather than at the next interval (a write failed or timed out)."""
        self._check_now.set()

    def want_new_producer(self, why: str) -> None:
        log.warning("%s: the producer will be replaced", why)
        self._reset_wanted = True
        self._check_now.set()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect now if Kafka is there; either way keep supervising in the background."""
        await self._connect()
        self._task = asyncio.create_task(self._supervise(), name="kafka-supervisor")

    async def stop(self) -> None:
        """Stop checking and replacing; the producer stays up until `close()`."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def close(self) -> None:
        """Close the health client and the producer (whose stop delivers what it buffered)."""
        await self._health.close()
        await self._drop_producer()

    async def _supervise(self) -> None:
        while True:
            interval = CHECK_INTERVAL_HEALTHY_S if self._healthy else CHECK_INTERVAL_UNHEALTHY_S
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._check_now.wait(), interval)
            self._check_now.clear()
            if self._reset_wanted:
                await self._drop_producer()
            if self.producer is None:
                await self._connect()
            else:
                await self._check()

    async def _connect(self) -> None:
        """A new producer, once the health check says the cluster answers (a producer started
        against an unreachable or refusing cluster only fails slowly)."""
        settings = self._settings
        await self._check()
        if self._problem.startswith("Kafka topics missing") and settings.create_topics:
            try:
                await create_topics(settings, self._credentials)
            except (KafkaError, OSError, TimeoutError) as exc:
                self._set_health(False, f"creating the topics failed ({describe(exc, settings)})")
                return
        elif not self._healthy:
            return
        producer = new_producer(settings, self._credentials)
        try:
            await asyncio.wait_for(producer.start(), REQUEST_TIMEOUT_MS / 1000)
        except (KafkaError, OSError, TimeoutError) as exc:
            await asyncio.gather(producer.stop(), return_exceptions=True)
            self._set_health(False, describe(exc, settings))
            return
        self.producer = producer
        self._reset_wanted = False
        log.info("connected to Kafka at %s", settings.kafka_bootstrap_servers)
        for _ in range(25):  # topics just created take a moment to appear in metadata
            await self._check(quiet=True)
            if self._healthy:
                return
            await asyncio.sleep(0.2)
        await self._check()

    async def _drop_producer(self) -> None:
        producer, self.producer = self.producer, None
        self._set_health(False, "Kafka producer is being replaced")
        self._reset_wanted = False
        if producer is not None:
            try:
                await asyncio.wait_for(producer.stop(), REQUEST_TIMEOUT_MS / 1000 + 5)
            except (KafkaError, OSError, TimeoutError) as exc:
                log.warning("Kafka producer did not close cleanly: %s", type(exc).__name__)

    async def _check(self, quiet: bool = False) -> None:
        problem, live = await self._health.check()
        self._set_health(not problem, problem, quiet)
        producer = self.producer
        if not problem and producer is not None and not self._reset_wanted:
            known = {b.nodeId for b in producer.client.cluster.brokers()}
            if known and not known & live:  # its metadata names only brokers that are gone
                self.want_new_producer("the producer knows only brokers that left the cluster")

    def _set_health(self, healthy: bool, problem: str = "Kafka is not reachable", quiet: bool = False) -> None:
        if not quiet and (healthy != self._healthy or problem != self._problem):  # changes only: no flood
            if healthy:
                log.info("Kafka is reachable and every topic exists")
            elif "SASL" in problem or "TLS" in problem:
                log.error("Kafka is not usable: %s", problem)
            else:
                log.warning("Kafka is not usable: %s", problem)
        self._healthy, self._problem = healthy, problem
        self._metrics.kafka_connected.set(1 if healthy else 0)
