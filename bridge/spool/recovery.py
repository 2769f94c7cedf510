"""Opening a claimed slot: its ledger rebuilt from the files, every frame checked.

A damaged stretch followed by a valid frame is moved aside to corrupt/ and reported, never skipped
silently; an unfinished write at the end of the newest segment was never acknowledged and is cut.
Delivery resumes at the recorded position. This runs before the bridge serves, so it calls the
file functions directly rather than through the spool's I/O thread.
"""
from __future__ import annotations

import logging
from pathlib import Path

from . import files
from .format import Entry, scan
from .ledger import SEGMENT_SUFFIX, Ledger, OnDamage, parse_position

log = logging.getLogger("bridge.spool")


def recover(directory: Path, on_damage: OnDamage) -> Ledger:
    """The ledger of the slot `directory`, whose lock the caller holds."""
    ledger = Ledger(directory)
    ids = sorted(int(p.stem) for p in files.listing(directory, f"*{SEGMENT_SUFFIX}") if p.stem.isdigit())
    position = read_position(ledger)
    ledger.ids_from(max([*ids, position[0] if position else 0]))
    for index, segment_id in enumerate(ids):
        path = ledger.path(segment_id)
        if position and segment_id < position[0]:
            files.remove(path)  # delivered before the last stop; only its deletion was lost
            continue
        start = position[1] if position and segment_id == position[0] else 0
        damaged = recover_segment(ledger, segment_id, start, newest=index == len(ids) - 1)
        if damaged:
            on_damage(damaged)
    if ledger.entries:
        log.warning("spool %s holds %d undelivered pushes (%d bytes) written before it was opened; they are "
                    "delivered to Kafka first", directory, ledger.entries, ledger.bytes)
    return ledger


def read_position(ledger: Ledger) -> tuple[int, int] | None:
    try:
        return parse_position(files.read_text(ledger.position_path))
    except (OSError, ValueError):
        return None


def recover_segment(ledger: Ledger, segment_id: int, start: int, newest: bool) -> int:
    """Check one segment and add it to the ledger; the number of damaged stretches moved aside."""
    path = ledger.path(segment_id)
    data = files.read_all(path)
    kept: list[Entry] = []
    damaged, moved = False, 0
    for item in scan(data, segment_id):
        if isinstance(item, Entry):
            kept.append(item)
        elif item.tail and newest:
            log.warning("spool segment %s: cut %d bytes of a write that never completed (never acknowledged)",
                        path.name, item.end - item.offset)
            damaged = True
        else:
            target = files.keep(ledger.aside_path("corrupt", segment_id, item.offset), data[item.offset:item.end])
            log.error("spool segment %d: %d damaged bytes at offset %d moved aside to %s; the entries around "
                      "them are delivered", segment_id, item.end - item.offset, item.offset, target)
            damaged, moved = True, moved + 1
    if damaged:  # keep the valid frames only, switching files atomically; deliver it from its start
        data = b"".join(data[e.offset:e.end] for e in kept)
        files.rewrite(path, data)
        kept, start = [e for e in scan(data, segment_id) if isinstance(e, Entry)], 0
    head = 0
    if not ledger.segments:  # the oldest segment: delivery resumes at the recorded position
        head = start if start == len(data) or any(e.offset == start for e in kept) else 0
        kept = [e for e in kept if e.offset >= head]
    ledger.found(segment_id, len(data), len(kept), kept[0].accepted_ms if kept else None, head, rewritten=damaged)
    return moved
