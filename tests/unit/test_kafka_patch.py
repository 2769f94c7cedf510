"""The one change the bridge makes to aiokafka at run time (bridge/kafka/patch.py), held to the
pinned aiokafka: the name it replaces exists, the producer's futures are made through it, looked
up when they are made, and once replaced they come from the loop the bridge gave."""
from __future__ import annotations

import asyncio
import inspect
import sys
from collections.abc import Iterator

import aiokafka.util
import pytest
from aiokafka.producer import message_accumulator
from aiokafka.producer.message_accumulator import BatchBuilder, MessageBatch
from aiokafka.structs import TopicPartition

from bridge.kafka.patch import PATCHED_ON, give_aiokafka_the_loop


@pytest.fixture
def other_loop(monkeypatch: pytest.MonkeyPatch) -> Iterator[asyncio.AbstractEventLoop]:
    """A loop that is not the running one, so a future made on it can only come from the patch."""
    monkeypatch.setattr(aiokafka.util, "get_running_loop", aiokafka.util.get_running_loop)  # restored after
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def test_the_replaced_name_is_a_function_of_no_arguments() -> None:
    assert inspect.isfunction(aiokafka.util.get_running_loop)
    assert not inspect.signature(aiokafka.util.get_running_loop).parameters


def test_aiokafkas_future_maker_looks_the_name_up_in_its_module_when_called() -> None:
    create_future = aiokafka.util.create_future
    assert create_future.__globals__ is vars(aiokafka.util)
    assert "get_running_loop" in create_future.__code__.co_names, "no longer asks aiokafka.util for the loop"


def test_the_producers_batches_make_their_futures_with_it() -> None:
    assert vars(message_accumulator)["create_future"] is aiokafka.util.create_future
    append = inspect.signature(MessageBatch.append).parameters
    assert append["_create_future"].default is aiokafka.util.create_future


@pytest.mark.skipif(sys.version_info >= PATCHED_ON, reason="only older Pythons pay a system call per lookup")
async def test_a_records_future_comes_from_the_given_loop(other_loop: asyncio.AbstractEventLoop) -> None:
    give_aiokafka_the_loop(other_loop)
    batch = MessageBatch(TopicPartition("t", 0), BatchBuilder(16384, 0), ttl=30, linger_time=0)
    future = batch.append(b"key", b"value", None)
    assert future is not None and future.get_loop() is other_loop
    assert batch.future.get_loop() is other_loop


@pytest.mark.skipif(sys.version_info < PATCHED_ON, reason="the patch applies here")
async def test_later_pythons_are_left_alone(other_loop: asyncio.AbstractEventLoop) -> None:
    original = aiokafka.util.get_running_loop
    give_aiokafka_the_loop(other_loop)
    assert aiokafka.util.get_running_loop is original
