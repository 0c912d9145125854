"""Elections by Redlock over N independent Redis masters.

A term is a lock held on a quorum (N//2+1) of nodes. Acquire sends ``SET NX
PX`` to every node at once and counts the term only if a quorum said yes
*and* the round finished inside the validity window; the deadline is the
round's start + ttl - drift, drift = ttl*1% + 2 ms. The core's renewal loop
extends every key the factory holds with ONE script call per node per tick.
Resign deletes the lock (compare-and-delete) and publishes on the key's
channel, which waiting candidates follow, so they retry at once instead of at
their next poll.
Fencing tokens come from a per-resource counter bumped on each node that
granted the lock and raised to the term's token on a quorum.
"""

from __future__ import annotations

import math
import random
import secrets
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import trio

from ..._election import BaseElection, BaseFactory, Renewal
from ...errors import MechanismUnavailableError
from ._notices import Notices, Signals
from ._redlock import (
    ACQUIRE,
    EXTEND,
    FENCE,
    RELEASE,
    NodeFailure,
    RedisNode,
    failures,
    fan_out,
    unavailable,
)

__all__ = ["RedisElection", "RedisFactory"]


def _pending(result: object) -> bool:
    return isinstance(result, NodeFailure) and result.reason == "no answer yet"


class RedisElection(BaseElection["RedisFactory"]):
    """The election of one resource by Redlock."""

    def __init__(self, factory: RedisFactory, resource_id: str) -> None:
        super().__init__(factory, resource_id)
        self.key = factory.key_template.format(prefix=factory.prefix, resource=resource_id)
        self.token_key = self.key + ":fencing"
        #: Where the scripts announce acquisitions and releases of the key.
        self.channel = self.key + ":notices"
        #: Our lock value while we hold or try for the lock: "instance:random".
        self._value: str | None = None

    async def _campaign(self) -> tuple[int, float]:
        factory = self._factory
        unreachable_rounds = 0

        async def attempt() -> tuple[int, float] | None:
            nonlocal unreachable_rounds
            try:
                won = await self._try_acquire()
            except MechanismUnavailableError:
                # A node stalling for a moment is not an outage: give up only
                # when a quorum stays unreachable for several rounds.
                unreachable_rounds += 1
                if unreachable_rounds >= factory.unreachable_rounds:
                    raise
                return None
            unreachable_rounds = 0
            return won

        # A free lock is taken without subscribing to anything.
        won = await attempt()
        if won is not None:
            return won
        async with factory.notices.following(self.channel) as signals:
            # Taken before each look at the lock, so no release is missed.
            released = signals.released
            if unreachable_rounds == 0:
                # It may have been released before we subscribed: look again.
                won = await attempt()
            while won is None:
                # Wait for a release notice; poll with jitter in case one is missed.
                with trio.move_on_after(factory.poll_interval * random.uniform(0.5, 1.5)):
                    await released.wait()
                released = signals.released
                won = await attempt()
            return won

    async def _try_acquire(self) -> tuple[int, float] | None:
        factory = self._factory
        value = f"{self.instance_id}:{secrets.token_hex(20)}"
        self._value = value
        round_started = trio.current_time()
        results = await fan_out(
            factory.nodes,
            lambda node: node.run(
                ACQUIRE,
                [self.key, self.token_key],
                [value, factory.ttl_ms, self.channel],
            ),
            nursery=factory.nursery,
            enough=factory.decided(lambda r: int(r) > 0),
        )
        granted = [int(r) for r in results if not isinstance(r, NodeFailure) and int(r) > 0]
        deadline = round_started + factory.ttl - factory.margin
        if len(granted) >= factory.quorum and trio.current_time() < deadline:
            token = max(granted)
            # Every granting node already counts `token` (the usual case), or
            # a second round raises a quorum's counters to it.
            if min(granted) == token or await self._fence(token):
                return token, deadline
        # Not held: undo the partial acquisition everywhere, then report why.
        await self._release()
        if len(failures(results)) > len(results) - factory.quorum:
            raise unavailable(f"cannot acquire {self.key!r}", results, factory.quorum)
        return None

    async def _fence(self, token: int) -> bool:
        """Make a quorum's counters at least ``token`` (skipped when they are)."""
        factory = self._factory
        results = await fan_out(
            factory.nodes,
            lambda node: node.run(FENCE, [self.key, self.token_key], [self._value or "", token]),
            nursery=factory.nursery,
            enough=factory.decided(lambda r: r == 1),
        )
        return sum(1 for r in results if r == 1) >= factory.quorum

    async def _release(self) -> None:
        value, self._value = self._value, None
        if value is None:
            return
        factory = self._factory
        results = await fan_out(
            factory.nodes,
            lambda node: node.run(RELEASE, [self.key], [value, self.channel]),
            nursery=factory.nursery,
            enough=factory.decided(lambda r: True),
        )
        if len(failures(results)) > len(results) - factory.quorum:
            raise unavailable(f"cannot release {self.key!r}", results, factory.quorum)

    async def leader(self) -> str | None:
        self._check_open()
        factory = self._factory

        async def get(node: RedisNode) -> str | None:
            return await node.client.get(self.key)

        results = await fan_out(factory.nodes, get, nursery=factory.nursery)
        if len(failures(results)) > len(results) - factory.quorum:
            raise unavailable(f"cannot read {self.key!r}", results, factory.quorum)
        holders = Counter(r.rpartition(":")[0] for r in results if isinstance(r, str) and ":" in r)
        for instance_id, count in holders.items():
            if count >= factory.quorum:
                return instance_id
        return None

    @asynccontextmanager
    async def _leader_changes(self) -> AsyncIterator[AsyncIterator[str | None]]:
        async with self._factory.notices.following(self.channel) as signals:
            yield self._follow_leader(signals)

    async def _follow_leader(self, signals: Signals) -> AsyncIterator[str | None]:
        while True:
            changed = signals.changed
            try:
                current = await self.leader()
            except MechanismUnavailableError:
                pass  # no quorum right now: keep following, the next poll re-syncs
            else:
                yield current
            with trio.move_on_after(self._factory.poll_interval):
                await changed.wait()


class RedisFactory(BaseFactory[RedisElection]):
    """One instance running Redlock over ``nodes``."""

    def __init__(
        self,
        nodes: Sequence[RedisNode],
        *,
        prefix: str,
        key_template: str,
        instance_id: str,
        ttl: float,
        close_timeout: float,
    ) -> None:
        super().__init__(instance_id=instance_id, ttl=ttl, close_timeout=close_timeout)
        self.nodes = list(nodes)
        self.quorum = len(self.nodes) // 2 + 1
        self.prefix = prefix
        self.key_template = key_template
        self.ttl_ms = math.ceil(ttl * 1000)
        #: Fallback retry period of waiting candidates and observers.
        self.poll_interval = ttl / 10
        #: Consecutive acquire rounds without a quorum of answers before a
        #: campaign gives up with MechanismUnavailableError.
        self.unreachable_rounds = 3
        self.notices = Notices(self.nodes, retry_interval=self.retry_interval)

    def decided(self, success: Callable[[Any], bool]) -> Callable[[Sequence[object]], bool]:
        """A fan-out is decided once a quorum succeeded or can no longer."""

        def enough(results: Sequence[object]) -> bool:
            answered = [r for r in results if not _pending(r)]
            succeeded = sum(1 for r in answered if not isinstance(r, NodeFailure) and success(r))
            return (
                succeeded >= self.quorum or len(answered) - succeeded > len(results) - self.quorum
            )

        return enough

    def _create_election(self, resource_id: str) -> RedisElection:
        return RedisElection(self, resource_id)

    async def _open(self) -> None:
        async def ping(node: RedisNode) -> object:
            return await node.client.ping()

        # Connecting (and the handshake) takes longer than a call on a warm
        # connection; allow it a second, as the failure is reported at once anyway.
        results = await fan_out(
            self.nodes, ping, nursery=self.nursery, limit=max(1.0, self.nodes[0].timeout)
        )
        if len(failures(results)) > len(results) - self.quorum:
            raise unavailable("cannot open", results, self.quorum)
        for node in self.nodes:
            self.nursery.start_soon(self.notices.listen, node)

    async def _renew(self, held: list[RedisElection]) -> Renewal[RedisElection]:
        holding = [e for e in held if e._value is not None]
        if not holding:
            return Renewal(refused=frozenset(held))
        keys = [e.key for e in holding]
        args: list[str | int] = [self.ttl_ms, *(e._value or "" for e in holding)]
        nodes, quorum = len(self.nodes), self.quorum

        def refusals_of(results: Sequence[object]) -> tuple[int, Counter[int]]:
            """How many nodes answered, and per key position how many refused."""
            answered = [r for r in results if isinstance(r, list)]
            return len(answered), Counter(int(i) - 1 for r in answered for i in r)

        # Unlike an acquire, an extension counts whenever it is answered: its
        # deadline runs from the send time. So a large batch may take up to the
        # renewal interval, not just the per-node timeout.
        def every_key_decided(results: Sequence[object]) -> bool:
            """Each key extended by a quorum or refused by a majority already."""
            answered, refusals = refusals_of(results)
            if answered < quorum and len(refusals) < len(keys):
                return False  # some key was extended everywhere, but not yet on a quorum
            return all(
                answered - refused >= quorum or refused > nodes - quorum
                for refused in refusals.values()
            )

        results = await fan_out(
            self.nodes,
            lambda node: node.run(EXTEND, keys, args),
            nursery=self.nursery,
            enough=every_key_decided,
            limit=self.renew_interval / 2,
        )
        answered, refusals = refusals_of(results)
        if not answered:
            raise unavailable("cannot extend", results, quorum)
        refused, unconfirmed = set(), set()
        for index, election in enumerate(holding):
            refused_by = refusals.get(index, 0)
            if answered - refused_by >= quorum:
                continue  # extended on a quorum
            if refused_by >= quorum:
                refused.add(election)  # a majority says the lock is not ours
            else:
                unconfirmed.add(election)
        refused.update(e for e in held if e._value is None)
        return Renewal(refused=frozenset(refused), unconfirmed=frozenset(unconfirmed))
