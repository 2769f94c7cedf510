"""A wallboard: what every agent is doing now, built on bridge.consumer.

    make run          # terminal 1: the bridge and a local Kafka
    make wallboard    # terminal 2: this board (Ctrl-C to stop)
    # terminal 3: push events (see README, "Try it"), or play the gateway:
    .venv/bin/python -m bench.simulate --url https://127.0.0.1:8043/service-cloud/rest/cc-ai/v1/agentevent/pushresult \\
        --cafile .local/tls/ca.pem --agents 20 --duration 60

The board keeps its state in SQLite: per agent, the state, since when, the last event and the
position (topic, partition, offset) of the last event applied, written in one transaction. After
a crash the helper hands out again the events it had not committed; the stored position lets the
board skip those it had already applied, so it applies every event exactly once.
"""
from __future__ import annotations

import argparse
import asyncio
import signal
import sqlite3
import sys
import time
from pathlib import Path

from bridge.consumer import AgentEvent, AgentEventConsumer

# eventType -> what the agent is doing from then on; other types leave the state as it was
STATES = {
    "AgentOther_InService": "signed in",
    "AgentState_Ready": "ready", "AgentState_Force_Ready": "ready",
    "AgentState_SetNotReady_Success": "not ready", "AgentState_Force_SetNotReady": "not ready",
    "AgentState_SetRest_Success": "resting", "AgentState_Rest_Timeout": "rest overrun",
    "AgentState_Work": "after-call work", "AgentState_SetWork_Success": "after-call work",
    "AgentState_Busy": "busy",
    "AgentOther_PhoneAlerting": "ringing", "AgentEvent_Ringing": "ringing",
    "AgentEvent_Customer_Alerting": "calling out",
    "AgentEvent_Talking": "talking", "AgentEvent_Hold": "on hold", "AgentEvent_Conference": "in conference",
    "AgentEvent_Call_Release": "call ended", "AgentEvent_Customer_Release": "call ended",
    "AgentOther_ShutdownService": "signed out",
}
SCHEMA = """CREATE TABLE IF NOT EXISTS agents (
    agent TEXT, topic TEXT, state TEXT, since TEXT, last_type TEXT, ce_id TEXT,
    partition INTEGER, offset INTEGER, PRIMARY KEY (agent, topic))"""


class Wallboard:
    """Current state per agent, in SQLite (a file, or ":memory:")."""

    def __init__(self, path: str) -> None:
        self.db = sqlite3.connect(path)
        self.db.execute(SCHEMA)
        self.applied = 0
        self.skipped = 0

    def position(self, agent: str, topic: str) -> tuple[str, int, int] | None:
        row = self.db.execute("SELECT partition, offset FROM agents WHERE agent = ? AND topic = ?",
                              (agent, topic)).fetchone()
        return None if row is None else (topic, row[0], row[1])

    async def handle(self, event: AgentEvent) -> None:
        if not event.is_after(self.position(event.agent, event.topic)):
            self.skipped += 1  # applied before a crash; its commit had not happened
            return
        row = self.db.execute("SELECT state, since FROM agents WHERE agent = ? AND topic = ?",
                              (event.agent, event.topic)).fetchone()
        state, since = row if row else ("unknown", event.headers.get("ce_time", ""))
        new_state = STATES.get(event.ce_type or "", state)
        if new_state != state:
            state, since = new_state, event.headers.get("ce_time", "")
        with self.db:  # state and position in one transaction
            self.db.execute("INSERT OR REPLACE INTO agents VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                            (event.agent, event.topic, state, since, event.ce_type, event.ce_id,
                             event.partition, event.offset))
        self.applied += 1

    def rows(self) -> list[tuple[str, str, str, str]]:
        return self.db.execute("SELECT agent, state, since, last_type FROM agents ORDER BY agent").fetchall()

    def render(self, limit: int = 40) -> str:
        rows = self.rows()
        counts: dict[str, int] = {}
        for _, state, _, _ in rows:
            counts[state] = counts.get(state, 0) + 1
        lines = [time.strftime("%H:%M:%S") + f"  {len(rows)} agents  " +
                 "  ".join(f"{state}: {n}" for state, n in sorted(counts.items())),
                 f"{'agent':<10} {'state':<16} {'since (UTC)':<24} last event"]
        lines += [f"{agent:<10} {state:<16} {since:<24} {last}" for agent, state, since, last in rows[:limit]]
        if len(rows) > limit:
            lines.append(f"... and {len(rows) - limit} more")
        return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m examples.wallboard", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:9092", help="Kafka (PLAINTEXT) address")
    parser.add_argument("--topic", default="cc.agent.events")
    parser.add_argument("--group", default="wallboard", help="consumer group id")
    parser.add_argument("--db", default=".local/wallboard.sqlite3", help="SQLite file (':memory:' for none)")
    parser.add_argument("--refresh", type=float, default=1.0, help="seconds between screen updates")
    return parser.parse_args(argv)


async def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.db != ":memory:":
        Path(args.db).parent.mkdir(parents=True, exist_ok=True)
    board = Wallboard(args.db)
    consumer = AgentEventConsumer([args.topic], board.handle, group_id=args.group, bootstrap_servers=args.bootstrap)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, consumer.stop)  # finish what was fetched, commit, leave
    task = asyncio.create_task(consumer.run())
    while not task.done():
        print("\033[2J\033[H" + board.render(), flush=True)
        await asyncio.wait({task}, timeout=args.refresh)
    await task
    print(f"applied {board.applied} events ({consumer.counts.duplicates} repeats dropped, "
          f"{board.skipped} already applied before a restart)")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
