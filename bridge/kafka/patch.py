"""The one change the bridge makes to aiokafka at run time.

aiokafka makes a future for every record it is sent (`aiokafka.util.create_future`, called by the
producer's batches), and `create_future` asks `aiokafka.util.get_running_loop` for the loop each
time, looking the name up in that module when it is called. That function asks asyncio, and before
Python 3.12 asyncio answers with a getpid() system call, to notice a fork: measured at 18% of the
bridge's CPU at saturation. The bridge serves from one loop for its whole life and never forks, so
aiokafka's module-level `get_running_loop` is replaced by one that returns that loop. Later Pythons
dropped the check, and nothing is changed there.

Borrowed: the private module function `aiokafka.util.get_running_loop`, and the fact that
`create_future` finds it through the module at call time. tests/unit/test_borrowed_names.py fails
when the pinned aiokafka stops working this way.
"""
from __future__ import annotations

import asyncio
import sys

import aiokafka.util

PATCHED_ON = (3, 12)  # the patch applies on Pythons older than this


def give_aiokafka_the_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Make aiokafka's futures and tasks come from `loop` without asking asyncio (Python < 3.12)."""
    if sys.version_info < PATCHED_ON:
        aiokafka.util.get_running_loop = lambda: loop
