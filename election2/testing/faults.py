"""A fault-injecting wrapper around any :class:`~election2.Election`.

Like Trillian's ``testonly.Decorator``: wrap an election, then make chosen
methods raise, or hold ``await_mastership`` until released, to test how your
code reacts to a misbehaving election without a misbehaving backend.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Literal, Self

import trio

from .._election import Election

__all__ = ["FaultyElection", "Method"]

Method = Literal["await_mastership", "with_mastership", "resign", "close", "leader", "observe"]
_METHODS = frozenset(Method.__args__)  # type: ignore[attr-defined]


class FaultyElection:
    """Delegates to ``election`` except where a fault was injected.

    ``inject("resign", err)`` makes every later ``resign()`` raise ``err``
    *before* reaching the wrapped election (so its state is untouched);
    ``inject("resign", None)`` clears it. ``block_await()`` makes
    ``await_mastership`` wait (cancellably) until ``release_await()``.
    """

    def __init__(self, election: Election) -> None:
        self.election = election
        self._errors: dict[str, BaseException] = {}
        self._unblocked: trio.Event | None = None

    def inject(self, method: Method, error: BaseException | None) -> None:
        """Make ``method`` raise ``error`` from now on (``None`` clears)."""
        if method not in _METHODS:
            raise ValueError(f"cannot inject into unknown method {method!r}")
        if error is None:
            self._errors.pop(method, None)
        else:
            self._errors[method] = error

    def block_await(self) -> None:
        """Hold every ``await_mastership`` call until :meth:`release_await`."""
        if self._unblocked is None:
            self._unblocked = trio.Event()

    def release_await(self) -> None:
        """Let blocked and future ``await_mastership`` calls through."""
        if self._unblocked is not None:
            self._unblocked.set()
            self._unblocked = None

    def _raise_injected(self, method: str) -> None:
        error = self._errors.get(method)
        if error is not None:
            raise error

    @property
    def resource_id(self) -> str:
        return self.election.resource_id

    @property
    def instance_id(self) -> str:
        return self.election.instance_id

    @property
    def is_master(self) -> bool:
        return self.election.is_master

    @property
    def fencing_token(self) -> int | None:
        return self.election.fencing_token

    async def await_mastership(self) -> None:
        if self._unblocked is not None:
            await self._unblocked.wait()
        self._raise_injected("await_mastership")
        await self.election.await_mastership()

    @asynccontextmanager
    async def with_mastership(self, *, grace: float = 0.0) -> AsyncIterator[trio.CancelScope]:
        self._raise_injected("with_mastership")
        async with self.election.with_mastership(grace=grace) as scope:
            yield scope

    async def resign(self) -> None:
        self._raise_injected("resign")
        await self.election.resign()

    async def close(self) -> None:
        self._raise_injected("close")
        await self.election.close()

    async def leader(self) -> str | None:
        self._raise_injected("leader")
        return await self.election.leader()

    @asynccontextmanager
    async def observe(self) -> AsyncIterator[AsyncIterator[str | None]]:
        self._raise_injected("observe")
        async with self.election.observe() as changes:
            yield changes

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
