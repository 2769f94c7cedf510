"""Waiting for a condition that a blocking check reads (a container's state, a cluster's API, an
HTTP endpoint), without blocking the event loop that drives the load meanwhile."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any


async def until(check: Callable[[], Any], timeout: float, what: str, every: float = 0.5) -> Any:
    """Poll `check` (run in a thread) every `every` seconds until it returns something truthy, and
    return that; AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = await asyncio.to_thread(check)
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not seen within {timeout:.0f} s: {what}")
        await asyncio.sleep(every)
