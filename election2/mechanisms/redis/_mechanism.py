"""Elections by Redlock over N independent Redis masters.

A term is a lock held on a quorum (N//2+1) of nodes. Acquire sends ``SET NX
PX`` to every node at once and counts the term only if a quorum said yes
*and* the round finished inside the validity window; the deadline is the
round's start + ttl - drift, drift = ttl*1% + 2 ms. The core's renewal loop
extends every key the factory holds with ONE script call per node per tick;
a node that lacked a key at a renewal that confirmed its term on a quorum
gets it back at the next one, so one node after another may fail for longer
than the ttl without ending the term. Resign deletes the lock
(compare-and-delete) and publishes on the prefix's channel, so waiting
candidates retry at once instead of at their next poll; a lost acquire round
is undone without a notice, and the loser retries after a jittered backoff.
Fencing tokens come from a per-resource counter bumped on each node that
granted the lock and raised to the term's token on a quorum (and on every
node where a renewal sets the key again).
"""

from __future__ import annotations

import math
import random
import secrets
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import coredis
import trio

from ..._election import BaseElection, BaseFactory, Renewal, single_exception
from ...errors import MechanismUnavailableError
from ._redlock import (
    ACQUIRE,
    EXTEND,
    FENCE,
    RELEASE,
    UNDO,
    NodeFailure,
    RedisNode,
    failures,
    fan_out,
    unavailable,
)

__all__ = ["RedisElection", "RedisFactory"]


def _pending(result: object) -> bool:
    return isinstance(result, NodeFailure) and result.reason == "no answer yet"


class _Signals:
    """Per-resource events set by the factory's pub/sub listeners."""

    def __init__(self) -> None:
        self.released = trio.Event()
        self.changed = trio.Event()

    def fire(self, kind: str) -> None:
        if kind == "released":
            self.released.set()
            self.released = trio.Event()
        self.changed.set()
        self.changed = trio.Event()


class RedisElection(BaseElection["RedisFactory"]):
    """The election of one resource by Redlock."""

    def __init__(self, factory: RedisFactory, resource_id: str) -> None:
        super().__init__(factory, resource_id)
        self.key = factory.key_template.format(prefix=factory.prefix, resource=resource_id)
        self.token_key = self.key + ":fencing"
        #: Our lock value while we hold or try for the lock, or hold it on some
        #: node until a release is confirmed: "instance:random".
        self._value: str | None = None
        #: The answers to the last renewal, if it confirmed the term, and the
        #: term's place in them: the next renewal sets the key again on the
        #: nodes that answered "missing" (late answers included).
        self._confirmed_by: tuple[dict[RedisNode, list[int]], int] | None = None

    async def _campaign(self) -> tuple[int, float]:
        factory = self._factory
        unreachable_rounds = lost_rounds = 0
        while True:
            signals = factory._signals(self.resource_id)
            released = signals.released
            try:
                won = await self._try_acquire()
            except MechanismUnavailableError:
                # A node stalling for a moment is not an outage: give up only
                # when a quorum stays unreachable for several rounds.
                unreachable_rounds += 1
                if unreachable_rounds >= factory.unreachable_rounds:
                    raise
                won, delay = None, factory.poll_interval
            else:
                unreachable_rounds = 0
                # Back off from a lost round: soon after the first (candidates
                # that split the nodes between them try again, out of step),
                # doubling up to the poll interval (someone holds the lock).
                delay = min(factory.first_retry * 2**lost_rounds, factory.poll_interval)
                lost_rounds += 1
            if won is not None:
                return won
            # Wait for a release notice, after which the backoff starts over;
            # the jittered delay also covers a missed notice.
            with trio.move_on_after(delay * random.uniform(0.5, 1.5)):
                await released.wait()
                lost_rounds = 0

    async def _try_acquire(self) -> tuple[int, float] | None:
        factory = self._factory
        if self._value is not None:
            await self._delete(UNDO)  # an earlier round's undo did not reach a quorum
        value = f"{self.instance_id}:{secrets.token_hex(20)}"
        self._value = value
        self._confirmed_by = None
        round_started = trio.current_time()
        results = await fan_out(
            factory.nodes,
            lambda node: node.run(
                ACQUIRE,
                [self.key, self.token_key],
                [value, factory.ttl_ms, factory.channel, self.resource_id],
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
        await self._delete(UNDO)
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
        """Delete our key everywhere and wake the candidates waiting for it."""
        await self._delete(RELEASE, self._factory.channel, self.resource_id)

    async def _delete(self, script: str, *notice: str) -> None:
        """Compare-and-delete our value on every node (``RELEASE`` or ``UNDO``).

        The value is forgotten only once a quorum answered (deleted, or not
        ours there): until then the deletion can be tried again.
        """
        value = self._value
        if value is None:
            return
        factory = self._factory
        results = await fan_out(
            factory.nodes,
            lambda node: node.run(script, [self.key], [value, *notice]),
            nursery=factory.nursery,
            enough=factory.decided(lambda r: True),
        )
        if len(failures(results)) > len(results) - factory.quorum:
            raise unavailable(f"cannot release {self.key!r}", results, factory.quorum)
        if self._value == value:
            self._value = None

    def _missing_nodes(self) -> set[RedisNode]:
        """Take the nodes where the previous renewal, which confirmed the term,
        found the key missing; none once the term's local deadline passed."""
        confirmed_by, self._confirmed_by = self._confirmed_by, None
        if confirmed_by is None or not self._mastership.held:
            return set()
        seen, index = confirmed_by
        return {node for node, answers in seen.items() if answers[index] == -1}

    async def _read_leader(self) -> str | None:
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
        yield self._follow_leader()

    async def _follow_leader(self) -> AsyncIterator[str | None]:
        factory = self._factory
        while True:
            changed = factory._signals(self.resource_id).changed
            try:
                current = await self._read_leader()
            except MechanismUnavailableError:
                pass  # no quorum right now: keep following, the next poll re-syncs
            else:
                yield current
            with trio.move_on_after(factory.poll_interval):
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
        self.channel = f"{prefix}:election2"
        self.ttl_ms = math.ceil(ttl * 1000)
        #: Fallback retry period of waiting candidates and observers.
        self.poll_interval = ttl / 10
        #: First backoff after a lost acquire round; doubles up to the poll interval.
        self.first_retry = self.poll_interval / 16
        #: Consecutive acquire rounds without a quorum of answers before a
        #: campaign gives up with MechanismUnavailableError.
        self.unreachable_rounds = 3
        self._resource_signals: dict[str, _Signals] = {}

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

    def _signals(self, resource_id: str) -> _Signals:
        signals = self._resource_signals.get(resource_id)
        if signals is None:
            signals = self._resource_signals[resource_id] = _Signals()
        return signals

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
            self.nursery.start_soon(self._listen, node)

    async def _listen(self, node: RedisNode) -> None:
        """Follow the prefix's channel on one node; reconnect after failures."""
        while True:
            try:
                with single_exception():  # coredis raises from its task group
                    await self._follow_channel(node)
            except (coredis.exceptions.RedisError, OSError):
                pass
            await trio.sleep(self.retry_interval)

    async def _follow_channel(self, node: RedisNode) -> None:
        async with node.client.pubsub(channels=[self.channel]) as pubsub:
            async for message in pubsub:
                if message["type"] != "message":
                    continue
                kind, _, resource_id = str(message["data"]).partition(":")
                signals = self._resource_signals.get(resource_id)
                if signals is not None:
                    signals.fire(kind)

    async def _renew(self, held: list[RedisElection]) -> Renewal[RedisElection]:
        holding = [e for e in held if e._value is not None]
        if not holding:
            return Renewal(refused=frozenset(held))
        keys = [e.key for e in holding] + [e.token_key for e in holding]
        # A key is set again only where the previous renewal found it missing,
        # only if that renewal found it on a quorum and only before the term's
        # local deadline: nobody else can have held the lock meanwhile, and a
        # key gone from a majority is never brought back.
        terms = [(e._value or "", e._mastership.token or 0, e._missing_nodes()) for e in holding]
        seen: dict[RedisNode, list[int]] = {}

        async def extend(node: RedisNode) -> list[int]:
            args: list[str | int] = [self.ttl_ms]
            for value, token, missing in terms:
                args += [value, token if node in missing else 0]
            # Recorded even after the renewal is decided: the slowest node
            # is the one most likely to lack keys.
            seen[node] = [int(a) for a in await node.run(EXTEND, keys, args)]
            return seen[node]

        # Unlike an acquire, an extension counts whenever it is answered: its
        # deadline runs from the send time. So a large batch may take up to the
        # renewal interval, not just the per-node timeout.
        def every_key_decided(results: Sequence[object]) -> bool:
            """Each key extended by a quorum or refused by a majority already."""
            answered = [r for r in results if isinstance(r, list)]
            for index in range(len(holding)):
                extended = sum(1 for r in answered if r[index] == 1)
                refused = len(answered) - extended
                if extended < self.quorum and refused <= len(results) - self.quorum:
                    return False
            return True

        results = await fan_out(
            self.nodes,
            extend,
            nursery=self.nursery,
            enough=every_key_decided,
            limit=self.renew_interval / 2,
        )
        answered = [r for r in results if not isinstance(r, NodeFailure)]
        if not answered:
            raise unavailable("cannot extend", results, self.quorum)
        refused, unconfirmed = set(), set()
        for index, election in enumerate(holding):
            # Only a node that still had the key extends the term; one that
            # got it back only now says nothing about the time in between.
            extended = sum(1 for r in answered if r[index] == 1)
            if extended >= self.quorum:
                election._confirmed_by = (seen, index)
            elif len(answered) - extended >= self.quorum:
                refused.add(election)  # a majority says the lock is not ours
            else:
                unconfirmed.add(election)
        refused.update(e for e in held if e._value is None)
        return Renewal(refused=frozenset(refused), unconfirmed=frozenset(unconfirmed))
