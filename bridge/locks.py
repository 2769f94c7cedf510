"""asyncio locks by key (an agent's workNo), taken in one global order so pushes never deadlock."""
from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any


class KeyedLocks:
    """Locks created on demand and dropped when nobody holds or awaits them.

    `hold(keys)` takes the locks of all distinct keys in one global order (so two pushes never
    deadlock) and is a plain class, cheap on the path every push takes."""

    def __init__(self) -> None:
        # key -> [lock, users]: a plain list, cheap to make (one is made whenever a free agent pushes)
        self._locks: dict[bytes, list[Any]] = {}

    def held(self, keys: Iterable[bytes]) -> bool:
        """Whether any of `keys` is held or awaited now."""
        locks = self._locks
        return bool(locks) and any(key in locks for key in keys)

    def hold(self, keys: Iterable[bytes]) -> _Held:
        return _Held(self, sorted(set(keys)))

    async def _acquire(self, keys: list[bytes]) -> None:
        for index, key in enumerate(keys):
            entry = self._locks.get(key)
            if entry is None:
                entry = self._locks[key] = [asyncio.Lock(), 0]
            entry[1] += 1
            try:
                await entry[0].acquire()
            except BaseException:  # cancelled while waiting: give back what was taken
                self._leave(key)
                self._release(keys[:index])
                raise

    def _release(self, keys: list[bytes]) -> None:
        for key in keys:
            self._locks[key][0].release()
            self._leave(key)

    def _leave(self, key: bytes) -> None:
        entry = self._locks[key]
        entry[1] -= 1
        if entry[1] == 0:
            del self._locks[key]

    def __len__(self) -> int:
        return len(self._locks)


class _Held:
    __slots__ = ("_keys", "_locks")

    def __init__(self, locks: KeyedLocks, keys: list[bytes]) -> None:
        self._locks, self._keys = locks, keys

    async def __aenter__(self) -> None:
        await self._locks._acquire(self._keys)

    async def __aexit__(self, *exc_info: object) -> None:
        self._locks._release(self._keys)
