"""The cancel-scope bookkeeping every mechanism shares.

A :class:`Mastership` tracks one election's current term: whether it is held,
its fencing token, its *local deadline* (the moment after which the backend
could elect someone else) and every cancel scope handed out by
``with_mastership()``. Mechanisms only ever call :meth:`begin`, :meth:`extend`
and :meth:`end`; the scopes follow.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import trio

__all__ = ["Mastership"]


class Mastership:
    """The state of one election's term and the scopes guarding work under it."""

    __slots__ = ("_deadline", "_held", "_scopes", "_token")

    def __init__(self) -> None:
        #: Every open scope, with how long before the deadline it ends (its
        #: grace); None while there is none (most held terms have none open).
        self._scopes: dict[trio.CancelScope, float] | None = None
        self._held = False
        self._token: int | None = None
        self._deadline = -math.inf

    @property
    def held(self) -> bool:
        """True while the backend granted the term and its local deadline is ahead."""
        return self._held and trio.current_time() < self._deadline

    @property
    def granted(self) -> bool:
        """True from :meth:`begin` to :meth:`end`, even past the local deadline."""
        return self._held

    @property
    def token(self) -> int | None:
        """The fencing token of the term from :meth:`begin` to :meth:`end`."""
        return self._token

    @property
    def deadline(self) -> float:
        """The local expiry on trio's clock; ``-inf`` when no term is held."""
        return self._deadline

    def begin(self, token: int, deadline: float) -> None:
        """Start a term. Scopes opened from now on run until ``deadline``."""
        self.end()
        self._held = True
        self._token = token
        self._deadline = deadline

    def extend(self, deadline: float) -> None:
        """Push the local deadline forward (never back) for the term and its scopes.

        A scope whose deadline already passed stays cancelled: work that ran past
        the local expiry does not resume, even if the backend later confirms that
        the term survived.
        """
        if not self._held or deadline <= self._deadline:
            return
        self._deadline = deadline
        for scope, grace in (self._scopes or {}).items():
            if not scope.cancel_called:
                scope.deadline = deadline - grace

    def end(self) -> None:
        """End the term: cancel every open scope at once. Idempotent."""
        self._held = False
        self._token = None
        self._deadline = -math.inf
        for scope in self._scopes or ():
            scope.cancel()

    @contextmanager
    def scope(self, grace: float = 0.0) -> Iterator[trio.CancelScope]:
        """Run a block under the term, ending ``grace`` seconds before its
        deadline; it is already cancelled if no term is held."""
        cancel_scope = trio.CancelScope(deadline=self._deadline - grace)
        if not self.held:
            cancel_scope.cancel()
        if self._scopes is None:
            self._scopes = {}
        self._scopes[cancel_scope] = grace
        try:
            with cancel_scope:
                yield cancel_scope
        finally:
            del self._scopes[cancel_scope]
            if not self._scopes:
                self._scopes = None
