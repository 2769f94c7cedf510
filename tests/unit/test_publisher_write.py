"""The publisher's rule for one write (bridge/publisher.py), without Kafka: bounded in time, Kafka's
errors turned into PublishError, an outside cancel never mistaken for the timeout, counted once
acknowledged, refused at once while Kafka is known to be unusable."""
from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError
from doubles import AckingProducer, Keeper, append_by_sending

from bridge import config
from bridge.kafka.errors import PublishError
from bridge.metrics import Metrics
from bridge.publisher import Publisher
from bridge.records import Record

SETTINGS = config.load({"BRIDGE_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "BRIDGE_TOPIC": "agents",
                        "BRIDGE_ROUTES": "Chat*=chat"}, serving=False)
PUSH = [Record("agents", b"1001", b"{}", []), Record("chat", b"1001", b"{}", []), Record("agents", b"1001", b"{}", [])]


class Rig:
    def __init__(self, ready: bool = True) -> None:
        self.producer = AckingProducer()
        self.keeper = Keeper(self.producer, ready=ready, problem="" if ready else "Kafka is not reachable (X)")
        self.metrics = Metrics()
        self.publisher = Publisher(SETTINGS, self.metrics, self.keeper, append_by_sending)

    def events(self, topic: str) -> float:
        return self.metrics.registry.get_sample_value("bridge_events_published_total", {"topic": topic}) or 0.0

    def publishes(self) -> float:
        return self.metrics.registry.get_sample_value("bridge_kafka_publish_duration_seconds_count") or 0.0


async def test_an_acknowledged_write_is_counted_by_topic() -> None:
    rig = Rig()
    rig.producer.ack.set_result(None)
    await rig.publisher.publish(PUSH)
    assert (rig.events("agents"), rig.events("chat"), rig.publishes()) == (2, 1, 1)
    assert rig.producer.sent == [(r.topic, r.key) for r in PUSH]
    assert rig.keeper.checks_asked == 0


async def test_a_write_while_kafka_is_unusable_fails_at_once_with_the_reason() -> None:
    rig = Rig(ready=False)
    with pytest.raises(PublishError, match=r"^Kafka is not reachable \(X\)$"):
        await rig.publisher.publish(PUSH, timeout=60)
    assert rig.producer.sent == [] and rig.publishes() == 0


async def test_a_write_that_times_out_becomes_publish_error_and_asks_for_an_early_check() -> None:
    rig = Rig()  # the acknowledgement never comes
    started = time.monotonic()
    with pytest.raises(PublishError, match=r"did not acknowledge within 0\.05 s") as failed:
        await rig.publisher.publish(PUSH, timeout=0.05)
    assert 0.04 < time.monotonic() - started < 1
    assert not failed.value.refused_records
    assert rig.keeper.checks_asked == 1 and rig.publishes() == 0 and rig.events("agents") == 0
    current = asyncio.current_task()
    assert current is not None and current.cancelling() == 0, "the timeout's cancel was left on the task"


async def test_a_cancel_from_outside_propagates_and_asks_for_nothing() -> None:
    rig = Rig()
    write = asyncio.create_task(rig.publisher.publish(PUSH, timeout=0.05))
    await asyncio.sleep(0)  # the write is waiting for its acknowledgement
    write.cancel()
    with pytest.raises(asyncio.CancelledError):
        await write
    await asyncio.sleep(0.1)  # past the bound: its timer was cancelled with the write
    assert rig.keeper.checks_asked == 0


async def test_a_cancel_from_outside_wins_over_a_timeout_of_the_same_moment() -> None:
    rig = Rig()
    write = asyncio.create_task(rig.publisher.publish(PUSH, timeout=0.01))
    await asyncio.sleep(0)  # the write is waiting, its deadline armed
    time.sleep(0.05)  # noqa: ASYNC251 (the deadline is due, but its timer cannot run while the loop is held)
    await asyncio.sleep(0)  # this resumes in the loop turn that runs the deadline's timer, just before it
    write.cancel()  # so the write is cancelled from outside and by its deadline before it runs again
    with pytest.raises(asyncio.CancelledError):
        await write
    assert rig.keeper.checks_asked == 0


@pytest.mark.parametrize(("error", "refused_records"), [
    (MessageSizeTooLargeError(), True),  # the records themselves: sending them again cannot succeed
    (KafkaTimeoutError(), False),
], ids=["record error", "other error"])
@pytest.mark.parametrize("when", ["acknowledging", "sending"])
async def test_kafkas_errors_become_publish_error(error: Exception, refused_records: bool, when: str) -> None:
    rig = Rig()
    if when == "sending":
        rig.producer.refuse = error
    else:
        rig.producer.ack.set_exception(error)
    with pytest.raises(PublishError, match=f"Kafka refused the events: {type(error).__name__}") as failed:
        await rig.publisher.publish(PUSH)
    assert failed.value.refused_records is refused_records
    assert rig.keeper.checks_asked == 1 and rig.publishes() == 0
    assert rig.keeper.replacements == ([] if when == "sending" else [f"Kafka rejected a batch ({type(error).__name__})"])
