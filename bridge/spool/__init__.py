"""The outage spool: a local append-only log of pushes Kafka could not take, durable before "0".

The process claims the first `slot-N` directory under BRIDGE_SPOOL_DIR it can lock (so replicas
may share one volume, and a restarted replica takes over a slot left behind) and recovers it: its
`OwnSlot`. `append` returns once an entry is fsync'd; `read` hands out undelivered entries in
order; `ack` marks a prefix of them delivered; `set_aside` keeps an entry that can never be
delivered out of the way; `close` finishes the writes in progress and releases the slot.

Replicas sharing a root keep each agent's pushes in order when the router moves agents between
them (bridge/spool/neighbours.py): `join` and `leave` tell the others when this one starts and
stops taking pushes; `vet_direct` says whether a push may go straight to Kafka (nothing spooled
here, no hold, nothing owed to another slot); `read` stops at a hold's cut; slots left behind by a
replica that is gone are adopted (`adopt_left_behind`) as `AdoptedSlot`s and delivered like the
replica's own.

The package, by concern:
    format.py      the frame layout and the scan that finds frames and damage in a segment's bytes
    files.py       every file operation, and the one thread they run on once the spool is open
    ledger.py      the slot's layout, its segments, the head and the counts (in memory)
    recovery.py    rebuilding the ledger of a claimed slot from its files, damage moved aside
    writer.py      group-committed appends, refusals (full, disk error, closed, not serving)
    reader.py      reading, acknowledging, deleting delivered segments, the position file
    slots.py       the root as every process sees it: owners, states, the board, what is owed,
                   the slots left behind
    holds.py       entries that wait until other slots delivered older pushes of moved agents
    neighbours.py  the owner among the others: joining, leaving, vetting (the writer's gate)
    slot.py        what every claimed slot does: read, ack, set aside, release holds, close
    own.py         the replica's own slot (OwnSlot): appends, joins, leaves, adopts
    adopted.py     a slot delivered for a replica that is gone (AdoptedSlot)
"""
from __future__ import annotations

from .adopted import AdoptedSlot, adopt_left_behind
from .files import claim
from .format import Entry
from .holds import Released
from .own import OwnSlot
from .reader import Folder
from .slot import Slot
from .writer import SpoolError

__all__ = ["AdoptedSlot", "Entry", "Folder", "OwnSlot", "Released", "Slot", "SpoolError", "adopt_left_behind", "claim"]
