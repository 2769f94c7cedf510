"""The one change the bridge makes to a library at run time: aiokafka is given the loop."""
from __future__ import annotations

import asyncio
import sys

import aiokafka.util
import pytest

from bridge.kafka import give_aiokafka_the_loop


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="only older Pythons pay a system call per lookup")
async def test_aiokafka_futures_come_from_the_bridges_loop_without_asking_asyncio(monkeypatch):
    loop = asyncio.get_running_loop()
    monkeypatch.setattr(aiokafka.util, "get_running_loop", aiokafka.util.get_running_loop)  # restored after
    asked = []
    monkeypatch.setattr(asyncio, "get_event_loop", lambda: asked.append(1) or loop)
    give_aiokafka_the_loop(loop)
    future = aiokafka.util.create_future()
    assert future.get_loop() is loop and asked == []
