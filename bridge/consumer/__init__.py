"""A subscriber's side of the bridge's topics: each agent's events once and in order (aiokafka).

    async def handle(event: AgentEvent) -> None: ...       # the application
    consumer = AgentEventConsumer(["cc.agent.events"], handle, group_id="wallboard",
                                  bootstrap_servers="127.0.0.1:9092")
    await consumer.run()                                    # until consumer.stop()

What it does with the records (docs/subscribers.md has the whole story):
- reads committed data only (`isolation_level="read_committed"`);
- per agent (record key), hands events to `handle` one at a time, in offset order; different
  agents run concurrently, at most `max_concurrency` at once;
- drops a record whose ce_id was already seen for that agent within `dedup_window_s` (by the
  bridge's receipt time, ce_time); the memory holds at most `dedup_capacity` ids, whatever the
  number of agents (the least recently active agents are forgotten first);
- commits, per partition, only the offsets below the oldest record `handle` has not finished;
- on a rebalance and on `stop()`, lets `handle` finish every record already fetched (at most
  `max_buffered`), commits, and only then lets the partitions go;
- on getting partitions, re-reads up to `warmup_records` records before each committed position
  to remember their ids, so a gateway retry that straddles a restart is still dropped.

It cannot know what `handle` did before a crash: records handled but not yet committed come again
after a restart. An application whose store records, with its own writes, the position of the last
event it applied per agent skips them (see `AgentEvent.position`).
"""
from .event import AgentEvent, Handler
from .group import AgentEventConsumer, Counts

__all__ = ["AgentEvent", "AgentEventConsumer", "Counts", "Handler"]
