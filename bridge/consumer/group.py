"""The consumer group member behind `AgentEventConsumer` (see the package's docstring)."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from .event import AgentEvent, Handler, parse
from .state import Progress, RecentIds, receipt_ms

log = logging.getLogger("bridge.consumer")


@dataclass
class Counts:
    delivered: int = 0
    duplicates: int = 0
    warmed_up: int = 0
    commits: int = 0
    rebalances: int = 0


class _Listener(ConsumerRebalanceListener):
    def __init__(self, owner: AgentEventConsumer) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._owner._release(revoked)

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._owner._take(assigned)


class AgentEventConsumer:
    """See the module's docstring. `client_options` go to AIOKafkaConsumer (bootstrap_servers,
    security_protocol, ssl_context, auto_offset_reset, ...)."""

    def __init__(self, topics: list[str], handler: Handler, *, group_id: str, dedup_window_s: float = 300.0,
                 dedup_capacity: int = 100_000, max_concurrency: int = 64, max_buffered: int = 1000,
                 commit_interval_s: float = 1.0, warmup_records: int = 10_000, warmup_timeout_s: float = 60.0,
                 **client_options: Any) -> None:
        self.topics, self.handler, self.group_id = list(topics), handler, group_id
        self.dedup_window_s, self.dedup_capacity = dedup_window_s, dedup_capacity
        self.max_concurrency, self.max_buffered, self.commit_interval_s = max_concurrency, max_buffered, commit_interval_s
        self.warmup_records, self.warmup_timeout_s = warmup_records, warmup_timeout_s
        self.client_options = {"auto_offset_reset": "earliest", **client_options}
        self.counts = Counts()
        self.recent = RecentIds(dedup_capacity, dedup_window_s * 1000)
        self._progress: dict[TopicPartition, Progress] = {}
        self._lanes: dict[str, deque[tuple[TopicPartition, AgentEvent]]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._slots = asyncio.Semaphore(max_concurrency)
        self._pending = 0
        self._changed = asyncio.Event()  # set whenever a record finishes (or fails)
        self._stopping = asyncio.Event()
        self._failure: BaseException | None = None
        self._to_warm: set[TopicPartition] = set()  # assigned, paused until their warm-up is done
        self._member: AIOKafkaConsumer | None = None

    @property
    def _consumer(self) -> AIOKafkaConsumer:
        """The group member of the current `run` (only used while it runs)."""
        if self._member is None:
            raise RuntimeError("the consumer is not running")
        return self._member

    def stop(self) -> None:
        """Ask `run` to finish: what was fetched is handled and committed, then it returns."""
        self._stopping.set()

    async def run(self) -> None:
        """Consume until `stop()`. If `handler` raises, fetching stops, the other agents finish the
        event in hand, what is finished is committed and the exception is raised here. Cancelling
        `run` abandons the work in progress without committing it, as a crash would."""
        self._member = AIOKafkaConsumer(**self.client_options, group_id=self.group_id, enable_auto_commit=False,
                                        isolation_level="read_committed")
        self._consumer.subscribe(self.topics, listener=_Listener(self))
        await self._consumer.start()
        try:
            await self._fetch_until_stopped()
            await self._settle(set(self._progress))
            if self._failure is not None:
                await asyncio.gather(*list(self._workers.values()), return_exceptions=True)
            await self._commit(set(self._progress))
        except asyncio.CancelledError:
            for worker in list(self._workers.values()):
                worker.cancel()
            raise
        finally:
            await self._consumer.stop()
        if self._failure is not None:
            raise self._failure

    async def _fetch_until_stopped(self) -> None:
        last_commit = time.monotonic()
        while not self._stopping.is_set():
            if self._to_warm:
                await self._warm_up_new()
            while self._pending >= self.max_buffered and not self._stopping.is_set():
                self._changed.clear()
                await self._wait_changed(0.5)
            if self._stopping.is_set():
                break
            batch = await self._consumer.getmany(timeout_ms=200, max_records=self.max_buffered - self._pending)
            for tp, records in batch.items():
                for record in records:
                    self._accept(tp, record)
            if time.monotonic() - last_commit >= self.commit_interval_s:
                await self._commit(set(self._progress))
                last_commit = time.monotonic()

    def _accept(self, tp: TopicPartition, record: Any) -> None:
        """Hand a fetched record to its agent's lane, or drop it as a repeat (no await: records
        returned by one fetch are all placed before a rebalance callback can run)."""
        progress = self._progress.get(tp)
        if progress is None:  # no longer ours (revoked meanwhile): its new owner reads it
            return
        progress.started(record.offset)
        headers = {name: value.decode("utf-8", "replace") for name, value in record.headers}
        agent = record.key.decode("utf-8", "replace") if record.key is not None else ""
        ce_id = headers.get("ce_id")
        if ce_id is not None and self.recent.seen(agent, ce_id, receipt_ms(headers, record.timestamp)):
            self.counts.duplicates += 1
            progress.finished(record.offset)
            return
        event = AgentEvent(agent, parse(record.value), headers, record.topic, record.partition, record.offset)
        self._lanes.setdefault(agent, deque()).append((tp, event))
        self._pending += 1
        if agent not in self._workers:
            self._workers[agent] = asyncio.create_task(self._work(agent))

    async def _work(self, agent: str) -> None:
        """Runs the agent's events one after the other, then ends (a new one starts with new events)."""
        lane = self._lanes[agent]
        try:
            while lane and self._failure is None:
                tp, event = lane[0]
                async with self._slots:
                    await self.handler(event)
                lane.popleft()
                self._pending -= 1
                self.counts.delivered += 1
                if tp in self._progress:
                    self._progress[tp].finished(event.offset)
                self._changed.set()
        except Exception as exc:  # the application failed: stop, without committing this event
            log.exception("handler failed on %s (agent %s); stopping", event.position, agent)
            self._failure = exc
            self._stopping.set()
            self._changed.set()
        finally:
            del self._workers[agent]
            if not lane:
                del self._lanes[agent]

    async def _wait_changed(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)

    async def _settle(self, tps: set[TopicPartition]) -> None:
        """Until every fetched record of `tps` is handled (or the handler failed)."""
        while self._failure is None and any(self._progress[tp].busy for tp in tps if tp in self._progress):
            self._changed.clear()
            await self._wait_changed(0.5)

    async def _commit(self, tps: set[TopicPartition]) -> None:
        offsets = {}
        for tp in tps:
            progress = self._progress.get(tp)
            offset = progress.committable() if progress is not None else None
            if progress is not None and offset is not None and offset != progress.committed:
                offsets[tp] = offset
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:  # e.g. a rebalance under way; committed later
            log.warning("commit of %s failed: %s", offsets, exc)
            return
        for tp, offset in offsets.items():
            progress = self._progress.get(tp)
            if progress is not None:  # a rebalance may have taken the partition while committing
                progress.committed = offset
        self.counts.commits += 1

    async def _release(self, revoked: set[TopicPartition]) -> None:
        """Rebalance, before the partitions go: finish what was fetched from them, commit it."""
        self.counts.rebalances += 1
        await self._settle(revoked)
        await self._commit(revoked)
        for tp in revoked:
            self._progress.pop(tp, None)
        self._to_warm -= set(revoked)

    def _take(self, assigned: set[TopicPartition]) -> None:
        """Rebalance, partitions received: nothing of them is handed out before the fetch loop has
        remembered the ids of the records before where it starts (see `_warm_up_new`)."""
        for tp in assigned:
            self._progress.setdefault(tp, Progress())
        self._consumer.pause(*assigned)
        self._to_warm |= set(assigned)

    async def _warm_up_new(self) -> None:
        tps, self._to_warm = self._to_warm, set()
        starts = {}
        for tp in tps:
            committed = await self._consumer.committed(tp)
            if committed and self.warmup_records > 0:
                starts[tp] = (max(0, committed - self.warmup_records), committed)
        if starts:
            self.counts.warmed_up += await self._warm_up(starts)
        self._consumer.resume(*(tps & self._consumer.assignment()))

    async def _warm_up(self, starts: dict[TopicPartition, tuple[int, int]]) -> int:
        reader = AIOKafkaConsumer(**{**self.client_options, "auto_offset_reset": "earliest"},
                                  enable_auto_commit=False, isolation_level="read_committed")
        await reader.start()
        remembered = 0
        try:
            reader.assign(list(starts))
            for tp, (first, _) in starts.items():
                reader.seek(tp, first)
            todo, deadline = set(starts), time.monotonic() + self.warmup_timeout_s
            while todo and time.monotonic() < deadline:
                for tp, records in (await reader.getmany(*todo, timeout_ms=500)).items():
                    for record in records:
                        if record.offset < starts[tp][1]:
                            headers = {k: v.decode("utf-8", "replace") for k, v in record.headers}
                            if "ce_id" in headers:
                                agent = record.key.decode("utf-8", "replace") if record.key is not None else ""
                                self.recent.seen(agent, headers["ce_id"], receipt_ms(headers, record.timestamp))
                                remembered += 1
                for tp in list(todo):
                    if await reader.position(tp) >= starts[tp][1]:
                        todo.discard(tp)
            if todo:
                log.warning("warm-up did not reach the committed offsets of %s in time", sorted(todo))
        finally:
            await reader.stop()
        return remembered
