"""Sharded ownership: spread many resources over the instances that want them.

:class:`ShardedOwnership` campaigns for every resource of a set and runs
``work(election)`` for each one this instance wins, inside that resource's
mastership scope. When mastership of a resource ends (loss, or ``work``
returning, which resigns it) the instance campaigns for it again. ``max_owned``
caps how many resources one instance holds, so that several instances share
the set instead of the first one taking everything.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable, Iterable

import trio

from ._checks import check_positive_seconds, check_resource_id
from ._election import Election, Factory
from .errors import ConfigurationError, MechanismUnavailableError

__all__ = ["ShardedOwnership"]

log = logging.getLogger("election2.ownership")

Work = Callable[[Election], Awaitable[None]]


class ShardedOwnership:
    """Own a share of ``resource_ids`` and run ``work`` for each owned resource.

    ``work(election)`` runs in the resource's mastership scope: it is cancelled
    when mastership ends. If it returns, the resource is resigned (so another
    instance may take it) and campaigned for again after a short pause.

    With ``max_owned`` set, at most that many resources are owned *or
    campaigned for* at once; a campaign that does not win within
    ``campaign_timeout`` seconds gives its slot to the next resource, so an
    instance blocked behind other masters keeps trying the free ones.
    """

    def __init__(
        self,
        factory: Factory,
        resource_ids: Iterable[str],
        work: Work,
        *,
        max_owned: int | None = None,
        campaign_timeout: float = 1.0,
    ) -> None:
        self._factory = factory
        self._resource_ids = [check_resource_id(r) for r in resource_ids]
        if len(set(self._resource_ids)) != len(self._resource_ids):
            raise ConfigurationError(f"resource ids repeat: {self._resource_ids!r}")
        if max_owned is not None and (isinstance(max_owned, bool) or max_owned < 1):
            raise ConfigurationError(f"max_owned must be a positive int or None: {max_owned!r}")
        self._work = work
        self._slots = trio.Semaphore(max_owned) if max_owned else None
        self._campaign_timeout = check_positive_seconds(campaign_timeout, name="campaign_timeout")
        self._owned: set[str] = set()

    @property
    def instance_id(self) -> str:
        """The instance this ownership works for (its factory's)."""
        return self._factory.instance_id

    @property
    def owned(self) -> frozenset[str]:
        """The resources this instance is master of and working on right now."""
        return frozenset(self._owned)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled; closes every election on the way out."""
        async with trio.open_nursery() as nursery:
            for resource_id in self._resource_ids:
                election = await self._factory.new_election(resource_id)
                nursery.start_soon(self._own, election)
            task_status.started()

    async def _own(self, election: Election) -> None:
        async with election:
            while True:
                try:
                    if self._slots is None:
                        await election.await_mastership()
                        await self._work_while_master(election)
                    else:
                        async with self._slots:
                            with trio.move_on_after(self._campaign_timeout):
                                await election.await_mastership()
                            await self._work_while_master(election)
                except MechanismUnavailableError as exc:
                    log.warning("%s: %s", election.resource_id, exc)
                # Let other resources (and instances) have a go before retrying.
                await trio.sleep(random.uniform(0, self._campaign_timeout))

    async def _work_while_master(self, election: Election) -> None:
        if not election.is_master:
            return
        self._owned.add(election.resource_id)
        try:
            async with election.with_mastership() as scope:
                await self._work(election)
            if not scope.cancelled_caught:
                await election.resign()
        finally:
            self._owned.discard(election.resource_id)
