"""The spool's record format: how an entry is framed in a segment, and how a segment's bytes are
read back. Pure functions over bytes; no file is touched here.

A frame is: magic u32 | payload length u32 | accepted-at ms u64 | crc32 u32 | payload, little-endian,
the CRC covering length, time and payload. `scan` finds the frames of a segment's bytes and reports
what lies between them as Damage, so a torn write or a damaged stretch is located, never guessed.
"""
from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

MAGIC = 0x50534343  # b"CCSP" little-endian
MAGIC_BYTES = struct.pack("<I", MAGIC)
HEADER = struct.Struct("<IIQI")


def frame(payload: bytes, accepted_ms: int) -> bytes:
    body = struct.pack("<IQ", len(payload), accepted_ms)
    return HEADER.pack(MAGIC, len(payload), accepted_ms, zlib.crc32(payload, zlib.crc32(body))) + payload


def accepted_at(data: bytes, at: int = 0) -> int:
    """The accepted-at time (ms) in the frame header starting at `at`."""
    accepted_ms: int = HEADER.unpack_from(data, at)[2]
    return accepted_ms


def frame_at(data: bytes | memoryview, at: int) -> tuple[int, int, bytes] | None:
    """(end, accepted ms, payload) of a valid frame starting at `at`, else None."""
    if at + HEADER.size > len(data):
        return None
    magic, length, accepted_ms, crc = HEADER.unpack_from(data, at)
    end = at + HEADER.size + length
    if magic != MAGIC or end > len(data):
        return None
    payload = bytes(data[at + HEADER.size:end])
    if zlib.crc32(payload, zlib.crc32(bytes(data[at + 4:at + 16]))) != crc:
        return None
    return end, accepted_ms, payload


@dataclass(frozen=True, slots=True)
class Entry:
    segment: int
    offset: int
    end: int
    accepted_ms: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Damage:
    """Bytes [offset, end) that hold no valid frame; `tail` when no valid frame follows them."""

    offset: int
    end: int
    tail: bool


def scan(data: bytes, segment: int, at: int = 0) -> Iterator[Entry | Damage]:
    """The frames of `data` from `at`, with damaged stretches between them reported as Damage."""
    while at < len(data):
        found = frame_at(data, at)
        if found is not None:
            end, accepted_ms, payload = found
            yield Entry(segment, at, end, accepted_ms, payload)
            at = end
            continue
        resume = data.find(MAGIC_BYTES, at + 1)
        while resume != -1 and frame_at(data, resume) is None:
            resume = data.find(MAGIC_BYTES, resume + 1)
        if resume == -1:
            yield Damage(at, len(data), tail=True)
            return
        yield Damage(at, resume, tail=False)
        at = resume
