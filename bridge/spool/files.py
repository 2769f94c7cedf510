"""The spool's one door to the file system: every file operation it makes, and the thread that runs them.

The functions below are plain and blocking. Recovery calls them directly, before the bridge serves;
once the spool is open they run only through `Files.run`, on a single thread, in the order they
were asked for. So no file operation ever holds up the event loop, a read never runs beside the
append whose bytes it might see half of, and an operation asked for first is done first (a
segment is closed before the next is created, a deletion comes before the position that follows it).
Nothing else in the spool opens, writes, syncs or deletes a file.

Slots of one root are also read by the other processes sharing it (bridge/spool/slots.py): they
look at a slot's `alive`, `state` and `position` files and its segment names without its lock, so
every file another process may read is replaced atomically (rename) or only grows.
"""
from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import mmap
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar, TypeVarTuple

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class Files:
    """The single thread every file operation of an open spool runs on."""

    def __init__(self) -> None:
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="spool-io")

    async def run(self, operation: Callable[[*Ts], T], *args: *Ts) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, operation, *args)

    def submit(self, operation: Callable[[*Ts], object], *args: *Ts) -> None:
        """Queue `operation` after those asked for so far, without waiting for it."""
        self._thread.submit(operation, *args)

    def shutdown(self) -> None:
        """Let the thread end; call it once the last operation asked for is done."""
        self._thread.shutdown(wait=False)


# -- the slot lock ---------------------------------------------------------------------------------

def claim(directory: Path) -> int | None:
    """An exclusive lock on `directory` (created if needed), or None if another process holds it."""
    directory.mkdir(exist_ok=True)
    fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def announce(directory: Path, text: str) -> int:
    """A fresh `alive` file in `directory` holding `text`, flock'd for as long as the returned
    descriptor is open. A new inode each time, so that a lock found free on the inode another process
    opened always means that the incarnation its text names is gone."""
    temporary = directory / f"alive.{os.getpid()}.tmp"
    fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # nobody else knows this inode yet
        os.write(fd, text.encode())
        os.replace(temporary, directory / "alive")
    except OSError:
        os.close(fd)
        temporary.unlink(missing_ok=True)
        raise
    return fd


def look_alive(directory: Path) -> tuple[str, bool] | None:
    """The text of the slot's `alive` file and whether the process that wrote it still holds its
    lock; None when there is no such file."""
    try:
        fd = os.open(directory / "alive", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            held = True
        else:
            held = False
            fcntl.flock(fd, fcntl.LOCK_UN)
        return os.pread(fd, 4096, 0).decode(errors="replace"), held
    finally:
        os.close(fd)


def read_optional(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def segment_sizes(directory: Path, suffix: str) -> list[tuple[int, int]]:
    """(id, size) of every segment file in `directory`, by id; a file deleted meanwhile is left out."""
    found = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    for entry in entries:
        stem, dot, rest = entry.name.partition(".")
        if dot and "." + rest == suffix and stem.isdigit():
            try:
                found.append((int(stem), entry.stat().st_size))
            except FileNotFoundError:
                continue
    return sorted(found)


def slot_directories(root: Path, prefix: str) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.name.startswith(prefix) and p.is_dir())


class Shared:
    """A small file every process sharing the root reads through a shared mapping (no system call
    per read: one page cache) and writes with pwrite. Never by storing into the mapping: on a
    frozen or stalled volume such a store blocks in a page fault while holding the interpreter's
    lock, which would stop every thread of the process; pwrite blocks only its own thread."""

    def __init__(self, path: Path, size: int) -> None:
        """Open `path`, created or grown to `size` bytes if needed (blocking)."""
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if os.fstat(self._fd).st_size < size:
                os.ftruncate(self._fd, size)
            self.view = mmap.mmap(self._fd, size, prot=mmap.PROT_READ)
        except BaseException:
            os.close(self._fd)
            raise

    def write(self, at: int, data: bytes) -> None:
        """Blocking: on the thread of whoever may wait for the volume."""
        os.pwrite(self._fd, data, at)


# -- segments --------------------------------------------------------------------------------------

def create(path: Path) -> int:
    """A new, empty file open for appends (its descriptor), its directory entry made durable."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        sync_directory(path.parent)
    except OSError:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    return fd


def append(fd: int, data: bytes, at: int) -> None:
    """Write `data` at offset `at` (the end of what is durable) and fdatasync it; on failure cut
    the file back to `at`, so bytes nobody was answered for never stay behind."""
    try:
        view = memoryview(data)
        written = 0
        while written < len(data):
            written += os.pwrite(fd, view[written:], at + written)
        os.fdatasync(fd)
    except OSError:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, at)
        raise


def close(fd: int) -> None:
    os.close(fd)


def read_range(path: Path, start: int, end: int) -> bytes:
    with open(path, "rb") as file:
        file.seek(start)
        return file.read(end - start)


def read_all(path: Path) -> bytes:
    return path.read_bytes()


def listing(directory: Path, pattern: str) -> list[Path]:
    return sorted(directory.glob(pattern))


def remove(path: Path) -> None:
    path.unlink(missing_ok=True)


# -- whole files -----------------------------------------------------------------------------------

def write_durably(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def keep(path: Path, data: bytes) -> Path:
    """`data` written to `path` and fsync'd, its directory created if needed."""
    path.parent.mkdir(exist_ok=True)
    write_durably(path, data)
    return path


def rewrite(path: Path, data: bytes) -> None:
    """Replace the contents of `path` with `data` in one atomic, durable step."""
    temporary = path.with_suffix(".tmp")
    write_durably(temporary, data)
    os.replace(temporary, path)
    sync_directory(path.parent)


def add_line(path: Path, line: str) -> None:
    """Append `line` to `path` (created if needed) and make it durable."""
    created = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, line.encode())
        os.fdatasync(fd)
    finally:
        os.close(fd)
    if created:
        sync_directory(path.parent)


def save(path: Path, text: str) -> None:
    """Replace `path` atomically with `text`, not fsync'd (for advisory files only)."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def read_text(path: Path) -> str:
    return path.read_text()


def probe(directory: Path, room: int) -> None:
    """Raise OSError unless the file system of `directory` has `room` bytes free for appends and
    takes one small durable write (the `probe` file of the slot, rewritten each time)."""
    free = os.statvfs(directory)
    if free.f_bavail * free.f_frsize < room:
        raise OSError(errno.ENOSPC, f"less than {room} bytes free")
    fd = os.open(directory / "probe", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, b"probe\n")
        os.fdatasync(fd)
    finally:
        os.close(fd)


def make_directories(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)


def sync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
