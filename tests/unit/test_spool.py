"""The outage spool on a real file system: framing, group commit, recovery, segments, the lock."""
from __future__ import annotations

import asyncio
import builtins
import errno
import io
import os
import threading

import pytest

from bridge.spool import OwnSlot, SpoolError, claim
from bridge.spool import files as spool_files
from bridge.spool import writer as spool_writer
from bridge.spool.format import HEADER, Damage, Entry, frame, scan

MiB = 1 << 20


async def serving(spool: OwnSlot) -> OwnSlot:
    """The spool as its owner uses it: taking pushes."""
    await spool.join()
    return spool


async def fill(spool: OwnSlot, payloads: list[bytes]) -> None:
    await asyncio.gather(*(spool.append(p) for p in payloads))


async def drain(spool: OwnSlot) -> list[bytes]:
    """Everything undelivered, in order, acknowledged as it is read."""
    got = []
    while spool.entries:
        entries = await spool.read()
        assert entries, "entries are counted but none can be read"
        got += [e.payload for e in entries]
        await spool.ack(entries)
    return got


def segments(spool: OwnSlot) -> list:
    return sorted(spool.directory.glob("*.seg"))


def test_frames_round_trip_and_damage_is_located():
    data = frame(b"one", 1) + frame(b"two", 2) + frame(b"three", 3)
    items = list(scan(data, 7))
    assert [(i.payload, i.accepted_ms, i.segment) for i in items] == [(b"one", 1, 7), (b"two", 2, 7), (b"three", 3, 7)]
    second = items[1]
    broken = bytearray(data)
    broken[second.offset + HEADER.size] ^= 0xFF  # a bit flip inside the second payload
    items = list(scan(bytes(broken), 7))
    assert [type(i) for i in items] == [Entry, Damage, Entry]
    assert (items[1].offset, items[1].end, items[1].tail) == (second.offset, second.end, False)
    assert list(scan(data[:-1], 7))[-1] == Damage(items[2].offset, len(data) - 1, tail=True)


async def test_entries_come_back_in_order_and_delivered_segments_are_deleted(tmp_path):
    spool = await serving(OwnSlot.open(tmp_path, 64 * MiB, segment_bytes=4096))
    payloads = [f"push-{n:04d}".encode() * 30 for n in range(200)]
    for start in range(0, 200, 20):  # batches of concurrent appends
        await fill(spool, payloads[start:start + 20])
    assert spool.entries == 200 and len(segments(spool)) > 5
    assert spool.bytes == sum(p.stat().st_size for p in segments(spool))
    assert await drain(spool) == payloads
    assert spool.idle and spool.oldest_ms is None
    assert segments(spool) == []  # every delivered segment is gone
    await spool.close()


async def test_concurrent_appends_share_one_fsync(tmp_path, monkeypatch):
    calls = []
    real = os.fdatasync
    monkeypatch.setattr(spool_files.os, "fdatasync", lambda fd: (calls.append(fd), real(fd)))
    spool = await serving(OwnSlot.open(tmp_path, 64 * MiB))
    await fill(spool, [b"x" * 100] * 500)
    assert spool.entries == 500
    assert 1 <= len(calls) < 50, f"{len(calls)} fsyncs for 500 concurrent appends"
    await spool.close()


async def test_acknowledged_position_survives_a_restart(tmp_path):
    spool = await serving(OwnSlot.open(tmp_path, 64 * MiB))
    await fill(spool, [b"a", b"b", b"c", b"d"])
    entries = await spool.read()
    await spool.ack(entries[:2])
    await spool.close()
    spool = await serving(OwnSlot.open(tmp_path, 64 * MiB))
    assert spool.entries == 2
    assert await drain(spool) == [b"c", b"d"]
    await spool.close()


async def write_three(tmp_path) -> tuple[OwnSlot, bytes]:
    spool = await serving(OwnSlot.open(tmp_path, 64 * MiB))
    for payload in (b"first" * 10, b"second" * 10, b"third" * 10):
        await spool.append(payload)  # one frame per write, three writes
    await spool.close()
    return spool, segments(spool)[0].read_bytes()


async def test_a_torn_last_entry_is_cut_at_every_byte_offset(tmp_path):
    _, data = await write_three(tmp_path)
    last = list(scan(data, 1))[-1]
    path = sorted(tmp_path.glob("slot-0/*.seg"))[0]
    for cut in range(last.offset, last.end):
        path.write_bytes(data[:cut])
        spool = await serving(OwnSlot.open(tmp_path, 64 * MiB))
        assert spool.entries == 2, f"cut at {cut}"
        assert path.stat().st_size == last.offset
        assert await drain_without_deleting(spool) == [b"first" * 10, b"second" * 10]
        assert not (spool.directory / "corrupt").exists()
        await spool.close()


async def drain_without_deleting(spool: OwnSlot) -> list[bytes]:
    entries = await spool.read()
    return [e.payload for e in entries]


async def test_a_corrupt_middle_entry_is_moved_aside_and_the_rest_delivered(tmp_path):
    _, data = await write_three(tmp_path)
    middle = list(scan(data, 1))[1]
    broken = bytearray(data)
    broken[middle.offset + HEADER.size + 3] ^= 0x01
    path = sorted(tmp_path.glob("slot-0/*.seg"))[0]
    path.write_bytes(bytes(broken))
    damage: list[int] = []
    spool = await serving(OwnSlot.open(tmp_path, 64 * MiB, on_damage=damage.append))
    assert sum(damage) == 1 and spool.entries == 2
    aside = list((spool.directory / "corrupt").iterdir())
    assert len(aside) == 1 and aside[0].read_bytes() == bytes(broken[middle.offset:middle.end])
    assert await drain(spool) == [b"first" * 10, b"third" * 10]
    await spool.close()


async def test_a_zero_filled_tail_is_cut(tmp_path):
    _, data = await write_three(tmp_path)
    path = sorted(tmp_path.glob("slot-0/*.seg"))[0]
    path.write_bytes(data + b"\0" * 4096)  # size grew, data never written
    spool = await serving(OwnSlot.open(tmp_path, 64 * MiB))
    assert spool.entries == 3 and path.stat().st_size == len(data)
    await spool.close()


async def test_a_slot_is_used_by_one_process_at_a_time(tmp_path):
    first = await serving(OwnSlot.open(tmp_path, MiB))
    second = await serving(OwnSlot.open(tmp_path, MiB))
    assert first.directory.name == "slot-0" and second.directory.name == "slot-1"
    assert claim(first.directory) is None  # held: a second claim fails
    await first.close()
    fd = claim(first.directory)
    assert fd is not None  # released with its owner
    os.close(fd)
    await second.close()


async def test_a_full_spool_refuses(tmp_path):
    spool = await serving(OwnSlot.open(tmp_path, max_bytes=1024))
    await spool.append(b"x" * 500)
    with pytest.raises(SpoolError, match="full"):
        await spool.append(b"y" * 600)
    assert spool.entries == 1
    await spool.close()


async def wait_until(condition, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "not within the time allowed"
        await asyncio.sleep(0.01)


async def test_a_failed_fsync_refuses_until_a_probe_write_succeeds_and_cuts_the_unsynced_bytes(tmp_path, monkeypatch):
    monkeypatch.setattr(spool_writer, "PROBE_EVERY_S", 0.01)
    failures: list[str] = []
    spool = await serving(OwnSlot.open(tmp_path, 64 * MiB, on_disk_failure=failures.append))
    await spool.append(b"kept")
    real = os.fdatasync

    def failing(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(spool_files.os, "fdatasync", failing)
    with pytest.raises(SpoolError, match="Input/output error"):
        await spool.append(b"lost")
    await asyncio.sleep(0.1)  # ten probes, all failing
    assert not spool.accepting and "Input/output error" in spool.refusal, "refused steadily, no flapping"
    with pytest.raises(SpoolError, match="Input/output error"):
        await spool.append(b"refused at once")
    assert failures == ["io_error"]
    monkeypatch.setattr(spool_files.os, "fdatasync", real)
    await wait_until(lambda: spool.accepting)
    assert spool.entries == 1
    await spool.append(b"after")
    await spool.close()
    spool = await serving(OwnSlot.open(tmp_path, 64 * MiB))
    assert await drain(spool) == [b"kept", b"after"]
    await spool.close()


def stall_fsyncs(monkeypatch) -> threading.Event:
    """Every fdatasync of the spool waits (a hung disk) until the returned event is set."""
    released = threading.Event()
    real = os.fdatasync

    def stalled(fd):
        released.wait(10)
        real(fd)

    monkeypatch.setattr(spool_files.os, "fdatasync", stalled)
    return released


async def test_a_stalled_disk_refuses_within_the_deadline_and_the_write_still_lands(tmp_path, monkeypatch):
    monkeypatch.setattr(spool_writer, "PROBE_EVERY_S", 0.01)
    failures: list[str] = []
    spool = await serving(OwnSlot.open(tmp_path, 64 * MiB, append_deadline_s=0.2, on_disk_failure=failures.append))
    await spool.append(b"first")
    released = stall_fsyncs(monkeypatch)
    started = asyncio.get_running_loop().time()
    with pytest.raises(SpoolError, match=r"did not finish the write within 0\.2 s"):
        await spool.append(b"stalled")
    assert asyncio.get_running_loop().time() - started < 1.0
    assert "has not finished a write" in spool.refusal and failures == ["stalled"]
    waiting = asyncio.ensure_future(spool.append(b"refused"))
    with pytest.raises(SpoolError, match="has not finished a write"):
        await waiting
    released.set()
    await wait_until(lambda: spool.accepting)
    assert spool.entries == 2, "the stalled write landed once the disk answered (the gateway's retry is a duplicate)"
    await spool.append(b"after")
    assert await drain(spool) == [b"first", b"stalled", b"after"]
    await spool.close()


async def test_an_append_that_waited_past_its_deadline_before_being_written_is_never_written(tmp_path, monkeypatch):
    monkeypatch.setattr(spool_writer, "PROBE_EVERY_S", 0.01)
    spool = await serving(OwnSlot.open(tmp_path, 64 * MiB, append_deadline_s=0.2))
    released = stall_fsyncs(monkeypatch)
    first = asyncio.ensure_future(spool.append(b"being written"))
    await asyncio.sleep(0.05)
    queued = asyncio.ensure_future(spool.append(b"queued behind it"))
    for waiting in (first, queued):
        with pytest.raises(SpoolError):
            await waiting
    released.set()
    await wait_until(lambda: spool.accepting)
    assert await drain(spool) == [b"being written"]
    await spool.close()


async def test_a_full_file_system_stays_refused_until_there_is_room_again(tmp_path, monkeypatch):
    monkeypatch.setattr(spool_writer, "PROBE_EVERY_S", 0.01)
    spool = await serving(OwnSlot.open(tmp_path, 64 * MiB))
    real_write, real_statvfs, free = os.pwrite, os.statvfs, {"bytes": 0}

    def no_space(fd, data, offset):
        raise OSError(errno.ENOSPC, "No space left on device")

    class Stat:
        def __init__(self, path):
            self.f_frsize, self.f_bavail = 1, free["bytes"]

    monkeypatch.setattr(spool_files.os, "pwrite", no_space)
    monkeypatch.setattr(spool_files.os, "statvfs", Stat)
    with pytest.raises(SpoolError, match="No space left"):
        await spool.append(b"x")
    monkeypatch.setattr(spool_files.os, "pwrite", real_write)
    await asyncio.sleep(0.1)
    assert not spool.accepting, "a probe write of a few bytes fits, but there is no room for appends"
    free["bytes"] = 1 << 30
    await wait_until(lambda: spool.accepting)
    monkeypatch.setattr(spool_files.os, "statvfs", real_statvfs)
    await spool.append(b"y")
    assert await drain(spool) == [b"y"]
    await spool.close()


async def test_an_unusable_directory_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(SpoolError, match="not usable"):
        OwnSlot.open(blocker / "spool", MiB)


async def test_reading_in_small_pieces_keeps_every_entry_whole_and_in_order(tmp_path):
    spool = await serving(OwnSlot.open(tmp_path, 64 * MiB))
    payloads = [f"entry-{n}".encode() * (3 if n != 7 else 300) for n in range(40)]  # entry 7 is larger
    for payload in payloads:
        await spool.append(payload)
    got = []
    while spool.entries:
        entries = await spool.read(limit=100)
        assert entries
        got += [e.payload for e in entries]
        await spool.ack(entries)
    assert got == payloads
    await spool.close()


def flip_byte(path, offset: int) -> None:
    """Change one byte of a segment on disk, as a failing disk would after the write."""
    with open(path, "r+b") as file:
        file.seek(offset)
        byte = file.read(1)[0]
        file.seek(offset)
        file.write(bytes([byte ^ 0x01]))


async def test_damage_found_while_reading_is_moved_aside_and_reported(tmp_path):
    damage: list[int] = []
    spool = await serving(OwnSlot.open(tmp_path, 64 * MiB, on_damage=damage.append))
    for payload in (b"first" * 10, b"second" * 10, b"third" * 10):
        await spool.append(payload)
    path = segments(spool)[0]
    middle = list(scan(path.read_bytes(), 1))[1]
    flip_byte(path, middle.offset + HEADER.size + 3)
    damaged = path.read_bytes()[middle.offset:middle.end]
    assert damage == []
    assert await drain(spool) == [b"first" * 10, b"third" * 10]
    assert damage == [1]
    aside = list((spool.directory / "corrupt").iterdir())
    assert [p.name for p in aside] == [f"{int(path.stem):020d}-{middle.offset}.bin"]
    assert aside[0].read_bytes() == damaged
    assert spool.idle and spool.oldest_ms is None
    await spool.close()


async def test_entries_set_aside_are_kept_and_only_corrupt_ones_count_as_damage(tmp_path):
    damage: list[int] = []
    spool = await serving(OwnSlot.open(tmp_path, 64 * MiB, on_damage=damage.append))
    for payload in (b"too large for Kafka", b"\xc1 not a record list", b"fine"):
        await spool.append(payload)
    entries = await spool.read()
    refused = await spool.set_aside(entries[0], "refused")
    corrupt = await spool.set_aside(entries[1], "corrupt")
    assert damage == [1]
    assert (refused.parent, refused.read_bytes()) == (spool.directory / "refused", b"too large for Kafka")
    assert (corrupt.parent, corrupt.read_bytes()) == (spool.directory / "corrupt", b"\xc1 not a record list")
    await spool.ack(entries[:2])
    await spool.close()
    spool = await serving(OwnSlot.open(tmp_path, 64 * MiB))  # set aside and acknowledged: not delivered again
    assert await drain(spool) == [b"fine"]
    await spool.close()


async def test_close_waits_for_the_appends_in_progress_then_refuses(tmp_path):
    spool = await serving(OwnSlot.open(tmp_path, 64 * MiB))
    appends = [asyncio.create_task(spool.append(b"push-%d" % n)) for n in range(300)]
    await asyncio.sleep(0)  # every append is queued, the first write under way
    await spool.close()
    assert all(task.done() and task.exception() is None for task in appends)
    with pytest.raises(SpoolError, match="closed"):
        await spool.append(b"late")
    spool = await serving(OwnSlot.open(tmp_path, 64 * MiB))
    assert await drain(spool) == [b"push-%d" % n for n in range(300)]
    await spool.close()


async def test_once_open_every_file_operation_runs_on_the_spool_thread_not_the_event_loop(tmp_path, monkeypatch):
    """Appends across segments, reads, damage moved aside, set-asides, acknowledgements (segment
    deletion, the position file) and close: none of them touches a file from the event loop."""
    damage: list[int] = []
    spool = await serving(OwnSlot.open(tmp_path, 64 * MiB, segment_bytes=4096, on_damage=damage.append))
    seen: dict[str, list[bool]] = {}  # name -> for each call, whether it ran on the event loop's thread
    paused = False

    def watch(module, name: str, only_spool_paths: bool) -> None:
        real = getattr(module, name)

        def watched(*args, **kwargs):
            if not paused and (not only_spool_paths or str(args[0]).startswith(str(tmp_path))):
                seen.setdefault(name, []).append(threading.current_thread() is threading.main_thread())
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, watched)

    for name in ("open", "mkdir", "unlink", "replace", "scandir"):
        watch(os, name, only_spool_paths=True)
    for name in ("fsync", "fdatasync", "pwrite", "ftruncate"):
        watch(os, name, only_spool_paths=False)
    watch(builtins, "open", only_spool_paths=True)
    watch(io, "open", only_spool_paths=True)

    payloads = [f"push-{n:03d}".encode() * 40 for n in range(60)]
    for start in range(0, 60, 10):
        await fill(spool, payloads[start:start + 10])
    paused = True  # the test's own look at the files, and its damage to the first segment
    first = segments(spool)[0]
    flip_byte(first, list(scan(first.read_bytes(), 1))[1].offset + HEADER.size)
    paused = False
    entries = await spool.read()
    assert [e.payload for e in entries[:2]] == [payloads[0], payloads[2]]
    await spool.set_aside(entries[0], "refused")
    await spool.ack(entries[:2])
    assert await drain(spool) == payloads[3:]
    await spool.close()
    assert damage == [1] and not first.exists()
    assert {"open", "mkdir", "unlink", "replace", "fsync", "fdatasync", "pwrite"} <= set(seen), sorted(seen)
    on_loop = {name: sum(calls) for name, calls in seen.items() if any(calls)}
    assert on_loop == {}, "calls made on the event loop's thread"
