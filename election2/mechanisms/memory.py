"""The in-memory mechanism: a fake cluster for tests, demos and single processes.

A :class:`MemoryBackend` plays the part of etcd: each factory (an *instance*)
holds one lease, kept alive by the shared renewal loop; each resource has a
FIFO queue of candidates whose head is the master; fencing tokens come from a
counter. Everything runs on trio's clock, so under
``trio.testing.MockClock(autojump_threshold=0)`` a TTL of minutes passes in
microseconds of real time.

Faults for downstream tests: :meth:`MemoryBackend.crash` (renewals stop and
the instance's calls fail; others win after the TTL), :meth:`~MemoryBackend.partition`
and :meth:`~MemoryBackend.heal`. :attr:`MemoryBackend.history` records every term.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import trio

from .._checks import DEFAULT_TTL, check_instance_id, check_ttl, default_instance_id
from .._election import BaseElection, BaseFactory, Renewal
from ..errors import ConfigurationError, MechanismUnavailableError
from . import parse_url

__all__ = ["MemoryBackend", "MemoryElection", "MemoryFactory", "Term", "open_factory"]


@dataclass
class Term:
    """One term of mastership as the backend saw it, on trio's clock."""

    resource_id: str
    instance_id: str
    token: int
    start: float
    end: float | None = None


class MemoryBackend:
    """An in-process election backend shared by several factories.

    ``ttl`` is the lease TTL of every instance. A backend belongs to one trio
    run at a time (its times are that run's clock).
    """

    _named: ClassVar[dict[str, MemoryBackend]] = {}

    def __init__(self, ttl: float = DEFAULT_TTL) -> None:
        self.ttl = check_ttl(ttl)
        #: Every term, in order of start; ``end`` is None while it is held.
        self.history: list[Term] = []
        self._lease_expiry: dict[str, float] = {}
        self._queues: dict[str, list[str]] = {}
        self._terms: dict[str, Term] = {}
        self._changed: dict[str, trio.Event] = {}
        self._open_instances: set[str] = set()
        #: Instances that joined: members while their lease lives.
        self._joined: set[str] = set()
        self._members_changed = trio.Event()
        self._partitioned: set[str] = set()
        self._crashed: set[str] = set()
        self._last_token = 0

    @classmethod
    def named(cls, name: str, *, ttl: float | None = None) -> MemoryBackend:
        """The process-wide backend behind ``memory://NAME`` (created on first use)."""
        backend = cls._named.get(name)
        if backend is None:
            backend = cls._named[name] = cls(DEFAULT_TTL if ttl is None else ttl)
        elif ttl is not None and ttl != backend.ttl:
            raise ConfigurationError(
                f"memory backend {name!r} already exists with ttl={backend.ttl:g}, not {ttl:g}"
            )
        return backend

    @asynccontextmanager
    async def open_factory(
        self, instance_id: str | None = None, *, close_timeout: float = 5.0
    ) -> AsyncIterator[MemoryFactory]:
        """Run a factory (one instance) on this backend."""
        factory = MemoryFactory(
            self,
            instance_id=default_instance_id() if instance_id is None else instance_id,
            close_timeout=close_timeout,
        )
        async with factory.running():
            yield factory

    # -- fault injection ----------------------------------------------------------

    def crash(self, instance_id: str) -> None:
        """The instance dies: it renews nothing and all its calls fail. Its terms
        end when its lease expires, one TTL after its last renewal."""
        self._crashed.add(check_instance_id(instance_id))

    def partition(self, instance_id: str) -> None:
        """Cut the instance off: its calls fail; its scopes end at its local
        deadline, before the backend's lease expiry lets anyone else win."""
        self._partitioned.add(check_instance_id(instance_id))

    def heal(self, instance_id: str) -> None:
        """Undo :meth:`partition` (or :meth:`crash`, as a restart)."""
        self._partitioned.discard(instance_id)
        self._crashed.discard(instance_id)

    # -- inspection -----------------------------------------------------------------

    def current_leader(self, resource_id: str) -> str | None:
        """The master of ``resource_id`` right now, as the backend sees it."""
        self._expire_leases()
        term = self._terms.get(resource_id)
        return term.instance_id if term else None

    def members(self) -> frozenset[str]:
        """The instances that joined and whose lease is alive right now."""
        self._expire_leases()
        return frozenset(i for i in self._joined if i in self._lease_expiry)

    def candidates(self, resource_id: str) -> list[str]:
        """The queue of ``resource_id``, master first."""
        self._expire_leases()
        return list(self._queues.get(resource_id, ()))

    # -- the protocol the factories speak --------------------------------------------

    def _check_reachable(self, instance_id: str) -> None:
        if instance_id in self._crashed:
            raise MechanismUnavailableError(f"memory backend: instance {instance_id!r} crashed")
        if instance_id in self._partitioned:
            raise MechanismUnavailableError(
                f"memory backend unreachable from partitioned instance {instance_id!r}"
            )

    def _register(self, instance_id: str) -> None:
        if instance_id in self._open_instances:
            raise ConfigurationError(
                f"instance id {instance_id!r} is already open on this memory backend"
            )
        self._open_instances.add(instance_id)

    def _unregister(self, instance_id: str) -> None:
        """Close the instance's session; a crashed or cut-off one cannot revoke
        (it stays a member until its lease expires)."""
        self._open_instances.discard(instance_id)
        if instance_id not in self._crashed | self._partitioned:
            self._revoke(instance_id)
            self._joined.discard(instance_id)
            self._notify_members()

    def _join(self, instance_id: str) -> None:
        self._check_reachable(instance_id)
        self._joined.add(instance_id)
        self._notify_members()

    def _keep_alive(self, instance_id: str) -> bool:
        """Refresh the instance's lease, or grant one; False if it had expired."""
        self._check_reachable(instance_id)
        self._expire_leases()
        alive = instance_id in self._lease_expiry
        self._lease_expiry[instance_id] = trio.current_time() + self.ttl
        if not alive and instance_id in self._joined:
            self._notify_members()  # a member again
        return alive

    def _has_lease(self, instance_id: str) -> bool:
        self._expire_leases()
        return instance_id in self._lease_expiry

    def _revoke(self, instance_id: str) -> None:
        if self._lease_expiry.pop(instance_id, None) is not None and instance_id in self._joined:
            self._notify_members()
        for resource_id in list(self._queues):
            self._withdraw(resource_id, instance_id)

    def _enqueue(self, resource_id: str, instance_id: str) -> None:
        self._check_reachable(instance_id)
        self._expire_leases()
        if instance_id not in self._lease_expiry:
            raise MechanismUnavailableError(f"memory backend: {instance_id!r} has no lease")
        queue = self._queues.setdefault(resource_id, [])
        if instance_id not in queue:
            queue.append(instance_id)
            self._advance(resource_id)

    def _withdraw(self, resource_id: str, instance_id: str) -> None:
        queue = self._queues.get(resource_id)
        if not queue or instance_id not in queue:
            return
        queue.remove(instance_id)
        term = self._terms.get(resource_id)
        if term is not None and term.instance_id == instance_id:
            term.end = trio.current_time()
            del self._terms[resource_id]
        if not queue:
            del self._queues[resource_id]
        self._advance(resource_id)
        self._notify(resource_id)

    def _advance(self, resource_id: str) -> None:
        """Make the head of the queue master if nobody is."""
        queue = self._queues.get(resource_id)
        if queue and resource_id not in self._terms:
            self._last_token += 1
            term = Term(resource_id, queue[0], self._last_token, trio.current_time())
            self._terms[resource_id] = term
            self.history.append(term)
            self._notify(resource_id)

    def _term(self, resource_id: str) -> Term | None:
        self._expire_leases()
        return self._terms.get(resource_id)

    def _expire_leases(self) -> None:
        now = trio.current_time()
        for instance_id, expiry in list(self._lease_expiry.items()):
            if expiry <= now:
                self._revoke(instance_id)

    def _next_expiry(self, resource_id: str) -> float:
        """When the lease of someone queued for ``resource_id`` runs out next."""
        queue = self._queues.get(resource_id, ())
        return min((self._lease_expiry.get(i, math.inf) for i in queue), default=math.inf)

    def _change_of(self, resource_id: str) -> trio.Event:
        """An event set at the resource's next change (take it before looking)."""
        return self._changed.setdefault(resource_id, trio.Event())

    async def _wait_for_change(self, resource_id: str, change: trio.Event | None = None) -> None:
        """Sleep until the resource's queue changes (``change`` is set) or a
        queued lease expires."""
        event = self._change_of(resource_id) if change is None else change
        with trio.move_on_at(self._next_expiry(resource_id)):
            await event.wait()
        self._expire_leases()

    def _notify_members(self) -> None:
        self._members_changed.set()
        self._members_changed = trio.Event()

    async def _wait_for_members(self, change: trio.Event) -> None:
        """Sleep until ``change`` is set or a member's lease expires."""
        expiries = (self._lease_expiry.get(i, math.inf) for i in self._joined)
        with trio.move_on_at(min(expiries, default=math.inf)):
            await change.wait()
        self._expire_leases()

    def _notify(self, resource_id: str) -> None:
        event = self._changed.pop(resource_id, None)
        if event is not None:
            event.set()


class MemoryElection(BaseElection["MemoryFactory"]):
    """An election on a :class:`MemoryBackend`."""

    __slots__ = ()

    async def _campaign(self) -> tuple[int, float]:
        backend = self._factory.backend
        while True:
            await trio.lowlevel.checkpoint()
            if not backend._has_lease(self.instance_id):
                self._factory._grant()
            backend._enqueue(self.resource_id, self.instance_id)
            term = backend._term(self.resource_id)
            if term is not None and term.instance_id == self.instance_id:
                return term.token, self._factory.lease_deadline
            await backend._wait_for_change(self.resource_id)

    async def _release(self) -> None:
        await trio.lowlevel.checkpoint()
        backend = self._factory.backend
        backend._check_reachable(self.instance_id)
        backend._withdraw(self.resource_id, self.instance_id)

    async def _read_leader(self) -> str | None:
        await trio.lowlevel.checkpoint()
        self._factory.backend._check_reachable(self.instance_id)
        return self._factory.backend.current_leader(self.resource_id)

    @asynccontextmanager
    async def _leader_changes(self) -> AsyncIterator[AsyncIterator[str | None]]:
        yield self._follow_leader()

    async def _follow_leader(self) -> AsyncIterator[str | None]:
        backend = self._factory.backend
        while True:
            backend._check_reachable(self.instance_id)
            # Taken before yielding: a change while the consumer is busy still
            # wakes the next wait (coalesced, never missed).
            change = backend._change_of(self.resource_id)
            yield backend.current_leader(self.resource_id)
            await backend._wait_for_change(self.resource_id, change)


class MemoryFactory(BaseFactory[MemoryElection]):
    """One instance on a :class:`MemoryBackend`; its lease covers all its elections."""

    def __init__(self, backend: MemoryBackend, *, instance_id: str, close_timeout: float) -> None:
        super().__init__(instance_id=instance_id, ttl=backend.ttl, close_timeout=close_timeout)
        self.backend = backend

    def _create_election(self, resource_id: str) -> MemoryElection:
        return MemoryElection(self, resource_id)

    async def _open(self) -> None:
        self.backend._register(self.instance_id)
        self._grant()

    def _grant(self) -> None:
        """Get a lease (again: after an outage the old one may have expired)."""
        lease_sent = trio.current_time()
        self.backend._keep_alive(self.instance_id)
        self.lease_deadline = lease_sent + self.ttl - self.margin

    async def _renew(self, held: list[MemoryElection]) -> Renewal[MemoryElection]:
        await trio.lowlevel.checkpoint()
        self.backend._keep_alive(self.instance_id)
        # The lease may have expired and been granted anew: a term survives
        # only if the backend still has it, with the same token.
        refused = set()
        for election in held:
            term = self.backend._term(election.resource_id)
            if term is None or (term.instance_id, term.token) != (
                self.instance_id,
                election._mastership.token,
            ):
                refused.add(election)
        return Renewal(refused=frozenset(refused))

    async def _release_all(self, elections: list[MemoryElection]) -> None:
        """Nothing to do: ending the session (:meth:`_close_session`) revokes
        the lease, which withdraws every candidacy on it at once."""

    async def _close_session(self) -> None:
        await trio.lowlevel.checkpoint()
        self.backend._unregister(self.instance_id)

    async def _register_presence(self) -> None:
        await trio.lowlevel.checkpoint()
        self.backend._join(self.instance_id)

    async def _read_members(self) -> frozenset[str]:
        await trio.lowlevel.checkpoint()
        self.backend._check_reachable(self.instance_id)
        return self.backend.members()

    @asynccontextmanager
    async def _member_changes(self) -> AsyncIterator[AsyncIterator[frozenset[str]]]:
        yield self._follow_members()

    async def _follow_members(self) -> AsyncIterator[frozenset[str]]:
        backend = self.backend
        while True:
            backend._check_reachable(self.instance_id)
            change = backend._members_changed  # taken before yielding
            yield backend.members()
            await backend._wait_for_members(change)


@asynccontextmanager
async def open_factory(
    url: str, *, instance_id: str | None = None, **options: Any
) -> AsyncIterator[MemoryFactory]:
    """``memory://NAME[?ttl=S]``: a factory on the process-wide backend ``NAME``."""
    unknown = set(options) - {"ttl", "close_timeout"}
    if unknown:
        raise ConfigurationError(f"unknown option(s) for memory://: {sorted(unknown)}")
    parsed = parse_url(url, default_port=1, default_prefix="default", options=options)
    # An explicit ttl must match the named backend's; none means "whatever it has".
    ttl_given = "ttl" in options or "ttl" in parse_qs(urlsplit(url).query)
    ttl = parsed.ttl if ttl_given else None
    backend = MemoryBackend.named(parsed.endpoints[0][0], ttl=ttl)
    async with backend.open_factory(
        instance_id, close_timeout=options.get("close_timeout", 5.0)
    ) as factory:
        yield factory
