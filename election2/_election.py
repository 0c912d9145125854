"""The ``Election`` / ``Factory`` protocols and the behaviour every mechanism shares.

:class:`BaseElection` and :class:`BaseFactory` hold everything that is the same
for every backend: argument checks, the mastership term and its cancel scopes,
the renewal loop that pushes deadlines forward, idempotent ``resign``, bounded
and shielded ``close``, and the factory's task nursery. A mechanism subclasses
both and supplies only what differs:

* ``BaseElection._campaign`` - wait until the backend makes us master;
* ``BaseElection._release`` - give up our candidacy or term in the backend;
* ``BaseElection._read_leader`` / ``BaseElection._leader_changes`` - who leads;
* ``BaseFactory._create_election``, ``_open``, ``_renew``, ``_close_session``.

Two promises are kept here once for every mechanism. *Nothing is left
behind*: a release that fails is retried in the factory's nursery until the
backend confirms it or the session ends, and a new campaign first removes
whatever an earlier one may have left. *Only public errors*: whatever a
mechanism or its client library raises reaches the caller as one of the
classes in :mod:`election2.errors`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, Protocol, Self, TypeVar, cast, runtime_checkable

import trio

from ._checks import (
    check_grace,
    check_instance_id,
    check_positive_seconds,
    check_resource_id,
    drift_margin,
)
from ._events import ElectionEvent, EventKind, EventLog, Listener
from ._locks import LockTable
from ._mastership import Mastership
from .errors import (
    ConfigurationError,
    ElectionClosedError,
    ElectionError,
    InvalidResourceIdError,
    MechanismUnavailableError,
)

__all__ = [
    "BaseElection",
    "BaseFactory",
    "Election",
    "Factory",
    "Health",
    "Renewal",
    "public_errors",
    "single_exception",
]

log = logging.getLogger("election2")


@runtime_checkable
class Election(Protocol):
    """Master election for one resource, as seen by one instance."""

    @property
    def resource_id(self) -> str: ...
    @property
    def instance_id(self) -> str: ...
    @property
    def is_master(self) -> bool: ...
    @property
    def fencing_token(self) -> int | None: ...

    async def await_mastership(self) -> None: ...
    def with_mastership(
        self, *, grace: float = 0.0
    ) -> AbstractAsyncContextManager[trio.CancelScope]: ...
    async def resign(self) -> None: ...
    async def close(self) -> None: ...
    async def leader(self) -> str | None: ...
    def observe(self) -> AbstractAsyncContextManager[AsyncIterator[str | None]]: ...
    async def __aenter__(self) -> Self: ...
    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


@runtime_checkable
class Factory(Protocol):
    """Creates the elections of one instance."""

    @property
    def instance_id(self) -> str: ...

    async def new_election(self, resource_id: str) -> Election: ...
    async def members(self) -> frozenset[str]: ...
    def observe_members(self) -> AbstractAsyncContextManager[AsyncIterator[frozenset[str]]]: ...


FactoryT = TypeVar("FactoryT", bound="BaseFactory")  # type: ignore[type-arg]
ElectionT = TypeVar("ElectionT", bound="BaseElection")  # type: ignore[type-arg]


class BaseElection(ABC, Generic[FactoryT]):
    """Shared implementation of :class:`Election`; see the module docstring."""

    # An instance may hold tens of thousands: no per-object dict.
    __slots__ = (
        "_campaigns",
        "_closed",
        "_factory",
        "_in_backend",
        "_last_token",
        "_mastership",
        "_pending",
        "_resource_id",
    )

    def __init__(self, factory: FactoryT, resource_id: str) -> None:
        self._factory = factory
        self._resource_id = resource_id
        self._mastership = Mastership()
        #: The campaign in progress (one at a time: under the campaign lock).
        self._pending: trio.CancelScope | None = None
        self._closed = False
        #: The backend may hold a candidacy or term of ours: set when a
        #: campaign starts, cleared only when a release is confirmed.
        self._in_backend = False
        #: Counts campaigns: a background release retry belongs to one of them
        #: and must never remove the record of a later one.
        self._campaigns = 0
        #: The token of our latest term: the next one must be higher.
        self._last_token: int | None = None

    # -- what a mechanism supplies -------------------------------------------

    @abstractmethod
    async def _campaign(self) -> tuple[int, float]:
        """Block until the backend makes this instance master.

        Returns the term's fencing token and its local deadline on trio's clock.
        If cancelled, leaves no candidacy behind in the backend.
        """

    @abstractmethod
    async def _release(self) -> None:
        """Remove this instance's candidacy and term from the backend.

        Called with the term already ended locally, never concurrently with
        itself. Idempotent; a no-op when there is nothing to remove. Raises if
        the backend did not confirm the removal: the core retries later, so
        the mechanism must keep what it needs to try again.
        """

    @abstractmethod
    async def _read_leader(self) -> str | None:
        """The current master's ``instance_id``, or ``None``; a read, no writes."""

    @abstractmethod
    def _leader_changes(self) -> AbstractAsyncContextManager[AsyncIterator[str | None]]:
        """Yield the current leader, then each later value (repeats are fine)."""

    # -- public API ------------------------------------------------------------

    @property
    def resource_id(self) -> str:
        return self._resource_id

    @property
    def instance_id(self) -> str:
        return self._factory.instance_id

    @property
    def is_master(self) -> bool:
        """Local belief: False as soon as the term ended or its local deadline passed."""
        return self._mastership.held

    @property
    def fencing_token(self) -> int | None:
        """The current term's token while :attr:`is_master`, else ``None``."""
        return self._mastership.token if self._mastership.held else None

    async def await_mastership(self) -> None:
        """Block until this instance is master of the resource.

        Returns at once if it already is. Cancelling the caller withdraws the
        candidacy. Raises :class:`ElectionClosedError` if the election is (or gets)
        closed while waiting, :class:`MechanismUnavailableError` if the backend
        cannot be reached.
        """
        self._check_open()
        async with self._factory._locks.hold((self, "campaign")):
            self._check_open()
            if self._mastership.held:
                return
            # The local deadline passed without the backend saying so: we cannot
            # tell whether the term survived, so start a fresh one.
            self._lost("backend unreachable past the local deadline")
            if self._in_backend and not await self._release_now():
                # An earlier candidacy may still be there: a campaign now could
                # find it and reuse its term (and its fencing token).
                raise MechanismUnavailableError(
                    f"cannot campaign for {self._resource_id!r}: the previous candidacy "
                    "is not released yet (retrying in the background)"
                )
            await self._factory._join()
            started = trio.current_time()
            self._emit("campaign")
            with trio.CancelScope() as pending:
                self._pending = pending
                self._in_backend = True
                self._campaigns += 1
                try:
                    with public_errors(f"campaign for {self._resource_id!r}"):
                        token, deadline = await self._campaign()
                except BaseException as exc:
                    # Cancelled or failed: withdraw the candidacy (retried in
                    # the background if the backend cannot be reached now).
                    self._emit("withdrawn", reason=_reason(exc))
                    await self._release_now()
                    raise
                finally:
                    self._pending = None
            if self._closed:
                await self._release_now()
                raise ElectionClosedError(f"election {self._resource_id!r} was closed")
            if self._last_token is not None and token <= self._last_token:
                await self._release_now()
                raise MechanismUnavailableError(
                    f"the backend granted {self._resource_id!r} with fencing token {token}, "
                    f"not above the previous term's {self._last_token}: refused"
                )
            self._last_token = token
            self._mastership.begin(token, deadline)
            self._emit("acquired", seconds=trio.current_time() - started)

    @asynccontextmanager
    async def with_mastership(self, *, grace: float = 0.0) -> AsyncIterator[trio.CancelScope]:
        """Run the block under the current term.

        Yields a :class:`trio.CancelScope` cancelled the moment mastership ends
        (loss, resign, close) and whose deadline is the term's local expiry,
        pushed forward on each renewal. Not master on entry: the scope is
        already cancelled. The block exits normally; ``scope.cancelled_caught``
        tells whether mastership ended under it.

        ``grace`` (seconds, ``0 <= grace < ttl``) moves the deadline that much
        earlier: nest such a scope inside a plain one to ask guarded work to wind
        down (flush, stop a child process) while the outer scope stays the hard
        limit. A bad ``grace`` raises :class:`ConfigurationError`.
        """
        self._check_open()
        grace = check_grace(grace, ttl=self._factory.ttl)
        with self._mastership.scope(grace) as scope:
            yield scope

    async def resign(self) -> None:
        """Give up mastership so another candidate can take over at once.

        Idempotent; a no-op when not master. Open scopes are cancelled before
        the backend is told, so guarded work stops before a successor can start.
        Shielded from the caller's cancellation (resign is often called from a
        scope it just cancelled) and bounded by ``close_timeout``; if the backend
        does not confirm the release in that time, it is retried in the
        background until it does or the factory closes.
        """
        self._check_open()
        if not self._mastership.granted:
            return
        self._end_term("resigned")
        await self._release_now()

    async def close(self) -> None:
        """Resign (shielded, bounded, retried in the background like
        :meth:`resign`) and make further use raise :class:`ElectionClosedError`.
        Idempotent."""
        if self._closed:
            return
        self._close_locally()
        if self._in_backend:
            await self._release_now()

    def _close_locally(self) -> None:
        """Close without telling the backend: stop the campaigns, end the
        term (its scopes are cancelled now) and leave the factory."""
        self._closed = True
        if self._pending is not None:
            self._pending.cancel()
        self._end_term("closed")
        self._factory._forget(self)

    async def leader(self) -> str | None:
        """The current master's ``instance_id``, or ``None`` when nobody leads.

        A read: it never writes to the backend.
        """
        self._check_open()
        with public_errors(f"leader of {self._resource_id!r}"):
            return await self._read_leader()

    @asynccontextmanager
    async def observe(self) -> AsyncIterator[AsyncIterator[str | None]]:
        """Iterate over the leader's ``instance_id`` (``None`` when nobody leads):
        first the current value, then every change."""
        self._check_open()
        async with self._leader_changes() as changes:
            yield _Distinct(changes)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _release_now(self, *, campaign: int | None = None) -> bool:
        """Release what the backend may hold of ours; True once it confirmed.

        Shielded from the caller's cancellation but bounded by the factory's
        ``close_timeout``. A release that fails is handed to the factory, which
        retries it in the background (``campaign``: this is such a retry, for
        that campaign's record; a later campaign's is not its to remove).
        """
        failure = f"no answer within {self._factory.close_timeout:g} s"
        with trio.move_on_after(self._factory.close_timeout) as bounded:
            bounded.shield = True
            async with self._factory._locks.hold((self, "release")):
                if not self._in_backend or campaign not in (None, self._campaigns):
                    return True  # released already (a campaign starts only after that)
                try:
                    with public_errors(f"release of {self._resource_id!r}"):
                        await self._release()
                except ElectionError as exc:
                    failure = str(exc)
                else:
                    self._in_backend = False
                    return True
        if campaign is None:
            log.warning(
                "%s: could not release %r, retrying in the background: %s",
                self.instance_id,
                self._resource_id,
                failure,
            )
        self._factory._retry_release(self, self._campaigns)
        return False

    # -- used by factories -----------------------------------------------------

    def _end_term(self, reason: str) -> None:
        """End the term at our request (``reason``: resigned or closed); one
        whose local deadline already passed was lost, not given up."""
        if self._mastership.held:
            self._emit("resigned", reason=reason)
            self._mastership.end()
        else:
            self._lost("backend unreachable past the local deadline")

    def _lost(self, reason: str) -> None:
        """The term ended without us asking (refused renewal, key deleted,
        lease gone, deadline passed); ``reason`` says which, for people."""
        if self._mastership.granted:
            self._emit("lost", reason=reason)
        self._mastership.end()

    def _emit(self, kind: EventKind, **details: object) -> None:
        """Tell the factory's listeners; terms carry their token and headroom."""
        token = self._mastership.token if self._mastership.granted else None
        headroom = self._mastership.deadline - trio.current_time() if token is not None else None
        self._factory._emit(
            ElectionEvent(
                kind,
                self.instance_id,
                self._resource_id,
                token=token,
                headroom=headroom,
                **details,  # type: ignore[arg-type]
            )
        )

    def _check_open(self) -> None:
        if self._closed or self._factory.closed:
            raise ElectionClosedError(f"election {self._resource_id!r} is closed")

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} resource={self._resource_id!r} "
            f"instance={self.instance_id!r} master={self._mastership.granted}>"
        )


ValueT = TypeVar("ValueT")


class _Distinct(Generic[ValueT]):
    """Drop consecutive repeats from a feed (leaders, member sets)."""

    _unset = object()

    def __init__(self, source: AsyncIterator[ValueT]) -> None:
        self._source = source
        self._last: object = self._unset

    def __aiter__(self) -> _Distinct[ValueT]:
        return self

    async def __anext__(self) -> ValueT:
        while True:
            with public_errors("observing"):
                value = await self._source.__anext__()
            if value != self._last:
                self._last = value
                return value


_PUBLIC_ERRORS = (
    ElectionClosedError,
    MechanismUnavailableError,
    InvalidResourceIdError,
    ConfigurationError,
)


@contextlib.contextmanager
def public_errors(what: str) -> Iterator[None]:
    """Let only the classes of :mod:`election2.errors` out of a mechanism call.

    A mechanism's own error class or a client library's exception becomes a
    :class:`MechanismUnavailableError` that says ``what`` failed (the original
    stays chained as its cause). Cancellation passes through untouched.
    """
    try:
        yield
    except (*_PUBLIC_ERRORS, StopAsyncIteration):
        raise
    except Exception as exc:
        if type(exc) is ElectionError:
            raise
        # Several concurrent calls failing at once: say what each one said.
        detail = "; ".join(dict.fromkeys(str(leaf) for leaf in _leaves(exc)))
        raise MechanismUnavailableError(f"{what}: {detail}") from exc


def _leaves(error: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, or ``error`` itself."""
    if not isinstance(error, BaseExceptionGroup):
        return [error]
    return [leaf for inner in error.exceptions for leaf in _leaves(inner)]


@contextlib.contextmanager
def single_exception() -> Iterator[None]:
    """Re-raise a lone exception out of (nested) exception groups as itself.

    Background tasks of a factory do not raise, so a lone error from its
    nurseries (or a client library's) is the caller's own or ``_open``'s: users
    should see ``MechanismUnavailableError``, not a group wrapping it.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        if len(leaves) == 1:
            raise leaves[0] from None
        raise


@dataclass(frozen=True)
class Health:
    """An instance's health as a candidate and master (:meth:`BaseFactory.health`)."""

    healthy: bool
    reason: str
    #: Terms held now.
    masters: int
    #: Seconds to the earliest local deadline (of a held term, else of the
    #: session); None when there is none.
    headroom: float | None


def _reason(error: BaseException) -> str:
    """A campaign's end, for people."""
    if isinstance(error, trio.Cancelled):
        return "cancelled"
    return str(error) or type(error).__name__


@dataclass(frozen=True)
class Renewal(Generic[ElectionT]):
    """What a renewal found out about the terms it was asked to renew."""

    #: The backend says these terms are over: they end at once.
    refused: frozenset[ElectionT] = frozenset()
    #: No answer either way (e.g. no quorum): not extended, they run on to
    #: their current deadline. Every other term is extended.
    unconfirmed: frozenset[ElectionT] = frozenset()


class BaseFactory(ABC, Generic[ElectionT]):
    """Shared implementation of :class:`Factory`.

    Owns a nursery for the mechanism's background tasks and runs the renewal
    loop: every ``renew_interval`` it asks the mechanism to renew, then pushes
    the deadline of every confirmed term to *send time + ttl - margin* and ends
    the terms the backend refused. A renewal that cannot reach the backend
    changes nothing: it is retried and the scopes run on to their deadline.
    """

    def __init__(self, *, instance_id: str, ttl: float, close_timeout: float = 5.0) -> None:
        self._instance_id = check_instance_id(instance_id)
        self.ttl = ttl
        self.close_timeout = check_positive_seconds(close_timeout, name="close_timeout")
        #: How much earlier than the backend we consider a lease expired.
        self.margin = drift_margin(ttl)
        self.renew_interval = ttl / 3
        self.retry_interval = ttl / 10
        #: Local expiry of the factory's session (lease mechanisms); -inf if none.
        self.lease_deadline = -math.inf
        self._elections: dict[str, ElectionT] = {}
        #: The campaign and release locks of the elections, while in use.
        self._locks = LockTable()
        self._join_lock = trio.Lock()
        self._joined = False
        self._closed = False
        self._nursery: trio.Nursery | None = None
        self._renewing = trio.CancelScope()
        self._listeners: list[Listener] = [EventLog()]
        self._renewal_failures = 0
        self._last_renewed = -math.inf
        #: (election, campaign) whose release is being retried in the background.
        self._releasing: set[tuple[BaseElection[Any], int]] = set()

    @property
    def instance_id(self) -> str:
        return self._instance_id

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def elections(self) -> list[ElectionT]:
        """The open elections of this factory."""
        return list(self._elections.values())

    @property
    def nursery(self) -> trio.Nursery:
        """The nursery of the running factory, for mechanism tasks."""
        if self._nursery is None:
            raise ElectionClosedError("factory is not running")
        return self._nursery

    # -- what a mechanism supplies ---------------------------------------------

    @abstractmethod
    def _create_election(self, resource_id: str) -> ElectionT:
        """Build the mechanism's election object (no I/O)."""

    async def _open(self) -> None:
        """Connect, create the session and start background tasks in :attr:`nursery`.

        Raises :class:`MechanismUnavailableError` if the backend is unreachable.
        """

    @abstractmethod
    async def _renew(self, held: list[ElectionT]) -> Renewal[ElectionT]:
        """Renew the session and the terms in ``held``; say which the backend
        refused (ended at once) and which it neither confirmed nor refused (they
        run on to their deadline). Raise :class:`MechanismUnavailableError` if the
        backend was not reached at all."""

    async def _release_all(self, elections: list[ElectionT]) -> None:
        """Release the records of ``elections`` as the factory closes (their
        terms ended locally already), in as few requests as the backend
        allows; :meth:`_close_session` follows. Raise if the backend did not
        confirm it all: what is left expires with the session.

        The default releases them one by one, concurrently. A mechanism whose
        session end removes every record (revoking a lease) does nothing here.
        """
        async with trio.open_nursery() as nursery:
            for election in elections:
                nursery.start_soon(election._release)

    async def _close_session(self) -> None:
        """Release the session (revoke the lease, close connections). Shielded."""

    async def _register_presence(self) -> None:
        """Make this instance a member: a presence record tied to the session
        (kept alive with it, gone within a TTL of a crash), outside the
        resource namespace. Called once, before the first campaign or
        membership query."""

    async def _read_members(self) -> frozenset[str]:
        """The instance ids with a live presence record."""
        raise NotImplementedError

    def _member_changes(self) -> AbstractAsyncContextManager[AsyncIterator[frozenset[str]]]:
        """The current members, then each later value (repeats are fine; take
        the change signal before yielding, as for leaders)."""
        raise NotImplementedError

    # -- shared behaviour -----------------------------------------------------

    async def members(self) -> frozenset[str]:
        """The live instances on this backend and prefix, this one included.

        A factory becomes a member when it first campaigns or asks about
        members (a factory that only reads leaders is none); it stops being one
        when it closes, or within a TTL and a second of a crash.
        """
        await self._join()
        with public_errors("members"):
            return await self._read_members()

    @asynccontextmanager
    async def observe_members(self) -> AsyncIterator[AsyncIterator[frozenset[str]]]:
        """Iterate over the set of members: the current one, then every change
        (coalesced, never stale, like :meth:`BaseElection.observe`)."""
        await self._join()
        async with self._member_changes() as changes:
            yield _Distinct(changes)

    async def _join(self) -> None:
        if self._closed:
            raise ElectionClosedError(f"factory {self._instance_id!r} is closed")
        if self._joined:
            # Not through the lock: campaigns started together would pass it
            # one per scheduler pass and reach a batching mechanism one by one.
            return
        async with self._join_lock:
            if not self._joined:
                with public_errors(f"joining as {self._instance_id!r}"):
                    await self._register_presence()
                self._joined = True

    async def new_election(self, resource_id: str) -> ElectionT:
        """The election of ``resource_id`` for this instance.

        Raises :class:`InvalidResourceIdError` for a bad id and
        :class:`ElectionError` if this factory already has an open election for it.
        """
        if self._closed:
            raise ElectionClosedError(f"factory {self._instance_id!r} is closed")
        resource_id = check_resource_id(resource_id)
        if resource_id in self._elections:
            raise ElectionError(
                f"factory {self._instance_id!r} already has an open election for "
                f"{resource_id!r}; close it first"
            )
        election = self._create_election(resource_id)
        self._elections[resource_id] = election
        return election

    # -- events and health ----------------------------------------------------

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(event)`` for every :class:`~election2.ElectionEvent`
        of this factory: transitions of its elections and its renewals. Called
        inline: it must be quick and must not block."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        """Stop calling ``listener``; a no-op if it is not registered."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _emit(self, event: ElectionEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("%s: event listener %r failed", self._instance_id, listener)

    def health(self) -> Health:
        """Whether this instance is healthy as a candidate and master: its last
        renewal succeeded (one failure is tolerated while a term has more than
        a renewal interval of headroom). For readiness probes and load
        balancers; see the operations guide."""
        held = [e for e in self._elections.values() if e._mastership.granted]
        headroom = (
            min((e._mastership.deadline for e in held), default=self.lease_deadline)
            - trio.current_time()
        )
        finite = headroom if math.isfinite(headroom) else None
        if self._closed:
            return Health(False, "closed", len(held), finite)
        if self._renewal_failures == 0:
            return Health(True, "renewals succeeding", len(held), finite)
        if self._renewal_failures == 1 and finite is not None and finite > self.renew_interval:
            return Health(True, "one renewal failed; retrying", len(held), finite)
        return Health(
            False, f"{self._renewal_failures} renewal(s) failed in a row", len(held), finite
        )

    def _forget(self, election: BaseElection[FactoryT]) -> None:
        if self._elections.get(election.resource_id) is election:
            del self._elections[election.resource_id]

    def _retry_release(self, election: BaseElection[Any], campaign: int) -> None:
        """Retry the release of ``election``'s record from ``campaign`` in the
        background until the backend confirms it or the session ends (the
        session's end removes it)."""
        if (election, campaign) in self._releasing or self._nursery is None or self._closed:
            return
        self._releasing.add((election, campaign))
        self._nursery.start_soon(self._release_until_confirmed, election, campaign)

    async def _release_until_confirmed(self, election: BaseElection[Any], campaign: int) -> None:
        # Backing off, but never slower than a renewal: a record the instance
        # no longer stands behind must go within a renewal interval of the
        # backend being reachable again.
        delay = self.retry_interval
        try:
            while election._in_backend and election._campaigns == campaign:
                await trio.sleep(delay * random.uniform(0.5, 1.0))
                if await election._release_now(campaign=campaign) and (
                    election._campaigns == campaign
                ):
                    log.info("%s: released %r", self._instance_id, election.resource_id)
                delay = min(delay * 2, self.renew_interval)
        finally:
            self._releasing.discard((election, campaign))

    def _confirm(
        self, renewal_sent: float, held: list[ElectionT], renewal: Renewal[ElectionT]
    ) -> None:
        """Apply a renewal sent at ``renewal_sent`` to the terms it covered."""
        deadline = renewal_sent + self.ttl - self.margin
        self.lease_deadline = deadline
        for election in held:
            if election in renewal.refused:
                election._lost("refused by the backend (key or lease gone)")
            elif election not in renewal.unconfirmed:
                election._mastership.extend(deadline)
        now = trio.current_time()
        self._renewal_failures = 0
        self._last_renewed = now
        self._emit(
            ElectionEvent(
                "renewed",
                self._instance_id,
                seconds=now - renewal_sent,
                headroom=self._headroom(held),
            )
        )

    def _headroom(self, held: list[ElectionT]) -> float | None:
        """Time left to the earliest local deadline of ``held`` (or the lease's)."""
        deadline = min((e._mastership.deadline for e in held), default=self.lease_deadline)
        return deadline - trio.current_time() if math.isfinite(deadline) else None

    async def _renew_loop(self) -> None:
        with self._renewing:
            await self._renew_forever()

    async def _renew_forever(self) -> None:
        delay = self.renew_interval
        while True:
            await trio.sleep(delay)
            renewal_sent = trio.current_time()
            held = [e for e in self._elections.values() if e._mastership.granted]
            if any(e._mastership.deadline <= renewal_sent for e in held):
                for election in held:
                    if election._mastership.deadline <= renewal_sent:
                        # Its scopes ended at the deadline already; now say so.
                        election._lost("backend unreachable past the local deadline")
                held = [e for e in held if e._mastership.granted]
            try:
                # A renewal slower than the interval is as good as lost.
                with trio.fail_after(self.renew_interval), public_errors("renewal"):
                    renewal = await self._renew(held)
            except (ElectionError, trio.TooSlowError) as exc:
                # Unreachable, or an error answer: either way nothing was
                # confirmed or refused. Retry soon; terms run to their deadline.
                self._renewal_failures += 1
                reason = (
                    f"no answer within {self.renew_interval:g} s"
                    if isinstance(exc, trio.TooSlowError)
                    else str(exc)
                )
                self._emit(
                    ElectionEvent(
                        "renewal_failed",
                        self._instance_id,
                        reason=reason,
                        seconds=trio.current_time() - renewal_sent,
                        headroom=self._headroom(held),
                    )
                )
                delay = self.retry_interval
                continue
            self._confirm(renewal_sent, held, renewal)
            delay = self.renew_interval

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Self]:
        """Open the session, run the background tasks, and close everything on exit."""
        with single_exception():
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                try:
                    with public_errors(f"opening {self._instance_id!r}"):
                        await self._open()
                    nursery.start_soon(self._renew_loop)
                    yield self
                finally:
                    await self.aclose()
                    nursery.cancel_scope.cancel()

    async def aclose(self) -> None:
        """Close every election (each resigns), then release the session.

        Shielded and bounded by ``close_timeout``, so it completes even when the
        caller is being cancelled. Idempotent.
        """
        if self._closed:
            return
        self._renewing.cancel()  # no renewal may race the release below
        elections = list(self._elections.values())
        # Every term ends (its guarded work is cancelled) before anything is
        # released, and the release is one request per batch, not per election.
        for election in elections:
            election._close_locally()
        # And those closed before whose release is still being retried.
        open_ones = set(elections)
        elections += {cast(ElectionT, e) for e, _ in self._releasing} - open_ones
        self._closed = True  # no release retry starts from here on
        with trio.move_on_after(self.close_timeout) as bounded:
            bounded.shield = True
            with self._failure_logged("releasing the elections"):
                await self._release_recorded(elections)
            with self._failure_logged("closing the session"):
                await self._close_session()
        if bounded.cancelled_caught:
            log.warning(
                "%s: closing took longer than close_timeout=%g s; what is left "
                "expires within a TTL",
                self._instance_id,
                self.close_timeout,
            )

    @contextmanager
    def _failure_logged(self, what: str) -> Iterator[None]:
        """Closing goes on when one step fails: what is left expires anyway."""
        try:
            with public_errors(what):
                yield
        except ElectionError as exc:
            log.warning(
                "%s: %s failed (left to expire within a TTL): %s", self._instance_id, what, exc
            )

    async def _release_recorded(self, elections: list[ElectionT]) -> None:
        """Release whatever of ``elections`` the backend may still hold."""
        recorded = [e for e in elections if e._in_backend]
        if recorded:
            await self._release_all(recorded)
            for election in recorded:
                election._in_backend = False
