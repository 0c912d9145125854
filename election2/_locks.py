"""Locks that exist only while someone holds or waits for them.

An instance may keep tens of thousands of elections; most of them are idle
(held, or not campaigning) at any moment. A :class:`trio.Lock` per election
and purpose would cost a few hundred bytes each for nothing; a
:class:`LockTable` creates a lock when it is first wanted and drops it when
its last user leaves.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager

import trio

__all__ = ["LockTable"]


class LockTable:
    """Mutual exclusion per key, with no cost for keys nobody uses."""

    def __init__(self) -> None:
        #: The lock of each key in use, and how many tasks hold or want it.
        self._locks: dict[Hashable, tuple[trio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: Hashable) -> AsyncIterator[None]:
        """Hold ``key``'s lock for the block (FIFO among waiters; the wait is
        cancellable like :class:`trio.Lock`'s). Taking a free lock is no
        checkpoint."""
        lock, users = self._locks.get(key, (None, 0))
        if lock is None:
            # Free: taken without a trip through the scheduler (an
            # acquire+release of an election takes two such locks).
            lock = trio.Lock()
            lock.acquire_nowait()
        self._locks[key] = (lock, users + 1)
        try:
            if users:
                await lock.acquire()
            try:
                yield
            finally:
                lock.release()
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        """How many keys are in use (held or waited for)."""
        return len(self._locks)
