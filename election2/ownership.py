"""Sharded ownership: a fleet shares many resources by itself, balanced.

Every instance runs a :class:`ShardedOwnership` over the same resource ids.
Each one watches the factory's members (:meth:`~election2.Factory.observe_members`)
and computes the same *plan* from the same inputs: rendezvous hashing with
bounded loads gives every resource an owner among the live members, at most
``ceil(R/N)`` resources each. An instance campaigns only for the resources the
plan gives it, so nobody polls for the others: at rest ownership costs no
backend writes beyond the factory's renewals.

* **Sticky.** A resource's owner is its highest-ranked member with room, so a
  join or a leave moves about R/N resources, not all of them.
* **Hand-off is a resign.** A holder whose resource the plan gave to someone
  else keeps it for ``handoff_delay`` seconds (time for the new owner to queue
  up behind it), then resigns: the new owner takes over at once.
* **Safe.** Work on a resource runs in its election's mastership scope, so two
  instances never work on it at once, whatever the plans say.
* **Dead members.** A crashed member leaves the member set within a TTL (and a
  second); its resources are planned onto the others, who win them as its
  lease expires.
* **Isolated failures.** ``work`` raising resigns that resource only (event
  ``failed``, logged with the traceback); it is campaigned for again after a
  backoff (1 s, doubling up to a minute).

Instances must be given the same resource ids (``add`` / ``remove`` on every
instance), or their plans differ: a resource some instance does not know may
then stay unowned.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Literal

import trio

from ._checks import check_positive_seconds, check_resource_id
from ._election import Election, Factory
from .errors import ConfigurationError, ElectionError, MechanismUnavailableError

__all__ = ["OwnershipEvent", "ShardedOwnership", "plan"]

log = logging.getLogger("election2.ownership")

Work = Callable[[Election], Awaitable[None]]

#: Backoff after ``work`` raised: from this, doubling, up to ``MAX_BACKOFF``.
FIRST_BACKOFF = 1.0
MAX_BACKOFF = 60.0


EventKind = Literal["acquired", "lost", "resigned", "failed"]


@dataclass(frozen=True)
class OwnershipEvent:
    """What happened to one resource of this instance."""

    kind: EventKind
    resource_id: str
    #: The term's fencing token.
    token: int | None
    #: lost: mastership ended under the work; resigned: "rebalanced",
    #: "work returned", "removed" or "stopped"; failed: the exception.
    reason: str | None = None


def _rank(member: str, resource_id: str) -> int:
    digest = hashlib.blake2b(f"{member}\0{resource_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def plan(members: Iterable[str], resource_ids: Iterable[str]) -> dict[str, str]:
    """Every resource's owner among ``members``, at most ``ceil(R/N)`` each.

    Rendezvous hashing with bounded loads: resources in a fixed (hashed) order
    each go to their highest-ranked member that still has room. The same
    inputs give the same plan on every instance.
    """
    candidates = sorted(set(members))
    resources = sorted(set(resource_ids), key=lambda r: (_rank("", r), r))
    if not candidates:
        return {}
    room = math.ceil(len(resources) / len(candidates))
    load: Counter[str] = Counter()
    owners = {}
    for resource_id in resources:
        for member in sorted(candidates, key=lambda m: _rank(m, resource_id), reverse=True):
            if load[member] < room:
                owners[resource_id] = member
                load[member] += 1
                break
    return owners


class _Shard:
    """One resource's election and the scope of its current campaign and work."""

    def __init__(self, resource_id: str) -> None:
        self.resource_id = resource_id
        self.active: trio.CancelScope | None = None
        self.stopping = False  # removed, or the ownership stops
        self.failures = 0


class ShardedOwnership:
    """Own this instance's share of ``resource_ids`` and run ``work`` for each.

    ``work(election)`` runs in the resource's mastership scope: it is cancelled
    when mastership ends or the resource is handed off. If it returns, the
    resource is resigned and campaigned for again. See the module docstring.
    """

    def __init__(
        self,
        factory: Factory,
        resource_ids: Iterable[str],
        work: Work,
        *,
        handoff_delay: float = 1.0,
    ) -> None:
        self._factory = factory
        ids = [check_resource_id(r) for r in resource_ids]
        if len(set(ids)) != len(ids):
            raise ConfigurationError(f"resource ids repeat: {ids!r}")
        self._work = work
        self._handoff_delay = check_positive_seconds(handoff_delay, name="handoff_delay")
        self._shards = {r: _Shard(r) for r in ids}
        self._members: frozenset[str] = frozenset()
        self._plan: dict[str, str] = {}
        self._plan_changed = trio.Event()
        self._owned: set[str] = set()
        self._listeners: set[trio.MemorySendChannel[OwnershipEvent]] = set()
        self._nursery: trio.Nursery | None = None

    @property
    def instance_id(self) -> str:
        """The instance this ownership works for (its factory's)."""
        return self._factory.instance_id

    @property
    def owned(self) -> frozenset[str]:
        """The resources this instance is master of and working on right now."""
        return frozenset(self._owned)

    @property
    def resource_ids(self) -> frozenset[str]:
        return frozenset(self._shards)

    @asynccontextmanager
    async def events(self) -> AsyncIterator[trio.MemoryReceiveChannel[OwnershipEvent]]:
        """Every :class:`OwnershipEvent` from now on, while the block runs."""
        send, receive = trio.open_memory_channel[OwnershipEvent](math.inf)
        self._listeners.add(send)
        try:
            async with receive:
                yield receive
        finally:
            self._listeners.discard(send)

    def add(self, resource_id: str) -> None:
        """Share ``resource_id`` too (on every instance). A no-op if known."""
        resource_id = check_resource_id(resource_id)
        if resource_id in self._shards:
            return
        shard = self._shards[resource_id] = _Shard(resource_id)
        if self._nursery is not None:
            self._nursery.start_soon(self._run_shard, shard)
        self._replan()

    def remove(self, resource_id: str) -> None:
        """Stop sharing ``resource_id``: its work is cancelled and it is resigned."""
        shard = self._shards.pop(resource_id, None)
        if shard is None:
            return
        shard.stopping = True
        if shard.active is not None:
            shard.active.cancel()
        self._replan()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled; every resource is resigned on the way out."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self._follow_members)
            for shard in list(self._shards.values()):
                nursery.start_soon(self._run_shard, shard)
            task_status.started()

    # -- the plan ---------------------------------------------------------------------

    async def _follow_members(self, *, task_status: trio.TaskStatus[None]) -> None:
        started = False
        while True:
            try:
                async with self._factory.observe_members() as changes:
                    async for members in changes:
                        self._members = members
                        self._replan()
                        if not started:
                            task_status.started()
                            started = True
            except MechanismUnavailableError as exc:
                log.warning("%s: cannot follow the members: %s", self.instance_id, exc)
                if not started:
                    task_status.started()
                    started = True
            await trio.sleep(self._handoff_delay)

    def _replan(self) -> None:
        self._plan = plan(self._members, self._shards)
        self._plan_changed.set()
        self._plan_changed = trio.Event()
        for shard in self._shards.values():
            if shard.active is None or self._mine(shard.resource_id):
                continue
            if shard.resource_id in self._owned and self._nursery is not None:
                self._nursery.start_soon(self._hand_off, shard)
            else:
                shard.active.cancel()  # only campaigning: withdraw at once

    def _mine(self, resource_id: str) -> bool:
        return self._plan.get(resource_id) == self.instance_id

    async def _hand_off(self, shard: _Shard) -> None:
        """Give the new owner time to queue up behind us, then resign."""
        await trio.sleep(self._handoff_delay)
        if shard.active is not None and not self._mine(shard.resource_id):
            shard.active.cancel()

    # -- one resource -----------------------------------------------------------------

    async def _run_shard(self, shard: _Shard) -> None:
        election = await self._factory.new_election(shard.resource_id)
        async with election:
            while not shard.stopping:
                while not self._mine(shard.resource_id):
                    await self._plan_changed.wait()
                    if shard.stopping:
                        return
                with trio.CancelScope() as shard.active:
                    await self._own(shard, election)
                shard.active = None
                if shard.stopping:
                    return
                if shard.failures:
                    await trio.sleep(min(FIRST_BACKOFF * 2 ** (shard.failures - 1), MAX_BACKOFF))

    async def _own(self, shard: _Shard, election: Election) -> None:
        """Campaign, then work while master; resign unless mastership was lost."""
        try:
            await election.await_mastership()
        except MechanismUnavailableError as exc:
            log.warning("%s: %r: %s", self.instance_id, shard.resource_id, exc)
            await trio.sleep(self._handoff_delay)
            return
        token = election.fencing_token
        self._owned.add(shard.resource_id)
        self._emit("acquired", shard.resource_id, token)
        returned = failed = lost = False
        try:
            async with election.with_mastership() as term:
                try:
                    await self._work(election)
                    returned, shard.failures = True, 0
                except Exception as exc:
                    failed, shard.failures = True, shard.failures + 1
                    log.exception(
                        "%s: work on %r failed; resigning it", self.instance_id, shard.resource_id
                    )
                    self._emit("failed", shard.resource_id, token, f"{type(exc).__name__}: {exc}")
            lost = term.cancelled_caught
        finally:
            self._owned.discard(shard.resource_id)
            with trio.CancelScope(shield=True):
                if lost and not election.is_master:
                    self._emit("lost", shard.resource_id, token, "mastership ended")
                else:
                    await self._resign(shard, election, token, returned, failed)

    async def _resign(
        self, shard: _Shard, election: Election, token: int | None, returned: bool, failed: bool
    ) -> None:
        try:
            await election.resign()
        except ElectionError as exc:  # closed under us: the close resigned
            log.debug("%s: resigning %r: %s", self.instance_id, shard.resource_id, exc)
        if shard.stopping:
            reason = "removed"
        elif shard.active is not None and shard.active.cancel_called:
            reason = "rebalanced"
        elif returned:
            reason = "work returned"
        elif failed:
            return  # "failed" was reported
        else:
            reason = "stopped"  # cancelled from outside: the ownership stops
        self._emit("resigned", shard.resource_id, token, reason)

    def _emit(
        self, kind: EventKind, resource_id: str, token: int | None, reason: str | None = None
    ) -> None:
        event = OwnershipEvent(kind, resource_id, token, reason)
        for send in list(self._listeners):
            try:
                send.send_nowait(event)
            except trio.BrokenResourceError:
                # Its block is ending while the ownership winds down too.
                self._listeners.discard(send)
