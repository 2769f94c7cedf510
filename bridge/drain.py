"""`cc-bridge drain`: deliver the spool slots no running bridge holds, then exit.

For a spool left on a volume whose replica no longer runs: a claim Kubernetes kept after a
scale-down (the StatefulSet retains it), a compose volume after `docker compose down`. It claims
every slot under the spool directory that no process holds and that has undelivered pushes (a
running bridge's slot is left to it), delivers them to Kafka in order, keeping the holds recorded
in them (bridge/spool/holds.py), and releases them. Nothing is acknowledged to the spool before
Kafka acknowledged it, so an interrupted run loses nothing: what is left is delivered by the next
run, or by a bridge that starts on the volume.

Exit codes: 0 every claimed slot is delivered (or there was nothing to deliver); 3 Kafka was not
usable, or the slots were not delivered, within the time allowed (what is left stays on disk); 2
a configuration error.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from .config import Settings
from .delivery import Delivery
from .kafka.credentials import Credentials
from .metrics import Metrics
from .publisher import Publisher
from .spool import adopt_left_behind
from .supervisor import Supervisor

NOT_DONE = 3


async def drain(settings: Settings, root: Path, timeout_s: float, say: Callable[[str], object] = print) -> int:
    metrics = Metrics()
    try:
        spools, busy = await adopt_left_behind(root, metrics.spool_corrupt.inc)
    except OSError as exc:
        say(f"{root}: the spool cannot be read ({exc.strerror or exc})")
        return NOT_DONE
    for name in busy:
        say(f"{name}: held by a running process, which delivers it; left alone")
    if not spools:
        say(f"nothing to deliver under {root}")
        return 0
    before = {spool: spool.entries for spool in spools}
    for spool in spools:
        holding = spool.order().get("holding")
        say(f"{spool.directory.name}: {spool.entries} pushes to deliver"
            + (f", those after its hold once {', '.join(holding['waiting_for'])} delivered theirs" if holding else ""))
    deadline = time.monotonic() + timeout_s
    publisher = Publisher(settings, metrics, Supervisor(settings, metrics, Credentials(settings)))
    delivery = Delivery(publisher, None, metrics)
    try:
        await publisher.start()
        while not publisher.ready and time.monotonic() < deadline:  # noqa: ASYNC110 (the publisher's own checks)
            await asyncio.sleep(0.2)
        if not publisher.ready:
            say(f"Kafka is not usable within {timeout_s:g} s ({publisher.problem}): nothing delivered, "
                f"{sum(before.values())} pushes kept in {root}")
            return NOT_DONE
        done = await asyncio.gather(*(delivery.deliver(spool, deadline) for spool in spools))
    finally:
        for spool in spools:
            await spool.close()
        await publisher.stop()
    for spool in spools:
        delivered = before[spool] - spool.entries
        if spool.entries:
            say(f"{spool.directory.name}: {delivered} pushes delivered, {spool.entries} still spooled "
                f"({publisher.problem or 'not done within the time allowed'}); run again to go on")
        else:
            say(f"{spool.directory.name}: {delivered} pushes delivered in order; the slot is empty")
    return 0 if all(done) else NOT_DONE
