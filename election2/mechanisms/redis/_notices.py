"""Release and acquire notices over Redis pub/sub, per resource and on demand.

Each lock key has its own channel (``<key>:notices``). The acquire and
release scripts publish on it from inside Redis, on every node they change.
A factory subscribes to a resource's channel only while one of its
candidates waits for that resource or someone observes it, so a master that
nobody waits for receives nothing: notices cost the holder no client CPU,
and a factory holding many resources does not hear its own traffic.

Each node has one subscriber connection, kept by a task in the factory's
nursery that reconnects after failures and re-subscribes to what is wanted.
A missed notice only costs latency: waiters and observers also poll.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import coredis
import trio
from coredis.patterns.pubsub import PubSub
from coredis.retry import NoRetryPolicy

from ..._election import single_exception
from ._redlock import RedisNode

__all__ = ["Notices", "Signals"]

log = logging.getLogger("election2.redis")


class Signals:
    """Events of one resource, replaced after each firing (so a waiter takes
    the current event *before* looking at the lock and misses nothing)."""

    def __init__(self) -> None:
        self.released = trio.Event()
        self.changed = trio.Event()
        #: How many waiters and observers of this factory follow the resource.
        self.followers = 0

    def fire(self, kind: str) -> None:
        if kind == "released":
            self.released.set()
            self.released = trio.Event()
        self.changed.set()
        self.changed = trio.Event()


class Notices:
    """The factory's subscriptions: one subscriber connection per node."""

    def __init__(self, nodes: Sequence[RedisNode], *, retry_interval: float) -> None:
        self._nodes = list(nodes)
        self._retry_interval = retry_interval
        #: Channel -> signals, for every channel someone follows.
        self._followed: dict[str, Signals] = {}
        #: The live subscriber of each node (absent while it reconnects).
        self._subscribers: dict[str, PubSub[str]] = {}

    @asynccontextmanager
    async def following(self, channel: str) -> AsyncIterator[Signals]:
        """Follow ``channel`` for the duration of the block.

        On entry, subscribes on every connected node at once and waits (each
        node at most its timeout) until they confirm, so a notice published
        after entry is not missed by a reachable node. Unsubscribes when the
        last follower leaves. Cancellation on entry is safe: the follower is
        counted from the start and uncounted on exit.
        """
        signals = self._followed.get(channel)
        if signals is None:
            signals = self._followed[channel] = Signals()
        signals.followers += 1
        try:
            if signals.followers == 1:
                await self._subscribe_everywhere(channel)
            yield signals
        finally:
            signals.followers -= 1
            if signals.followers == 0 and self._followed.get(channel) is signals:
                del self._followed[channel]
                for subscriber in self._subscribers.values():
                    # Fire and forget: no need to wait for the confirmation;
                    # a broken connection forgets its subscriptions anyway.
                    with contextlib.suppress(coredis.exceptions.RedisError, OSError):
                        subscriber._unsubscribe(channel)

    async def _subscribe_everywhere(self, channel: str) -> None:
        async def subscribe(node: RedisNode, subscriber: PubSub[str]) -> None:
            with trio.move_on_after(node.timeout):
                try:
                    await subscriber.subscribe(channel)
                except (coredis.exceptions.RedisError, OSError, TimeoutError) as exc:
                    log.debug("subscribing to %s on %s: %r", channel, node.name, exc)

        async with trio.open_nursery() as nursery:
            for node in self._nodes:
                subscriber = self._subscribers.get(node.name)
                if subscriber is not None:
                    nursery.start_soon(subscribe, node, subscriber)

    async def listen(self, node: RedisNode) -> None:
        """Keep a subscriber on ``node`` forever (a task of the factory)."""
        while True:
            try:
                with single_exception():  # coredis raises from its task group
                    await self._follow(node)
            except (coredis.exceptions.RedisError, OSError, TimeoutError) as exc:
                log.debug("notices from %s interrupted: %r", node.name, exc)
            finally:
                self._subscribers.pop(node.name, None)
            await trio.sleep(self._retry_interval)

    async def _follow(self, node: RedisNode) -> None:
        async with node.client.pubsub(
            retry_policy=NoRetryPolicy(), subscription_timeout=node.timeout
        ) as subscriber:
            # Registered first: a channel followed from now on is subscribed
            # by its follower; the ones followed already, here.
            self._subscribers[node.name] = subscriber
            if self._followed:
                await subscriber.subscribe(*self._followed)
            while True:
                message = await subscriber.get_message()
                if message is None or message["type"] != "message":
                    continue
                signals = self._followed.get(str(message["channel"]))
                if signals is not None:
                    signals.fire(str(message["data"]))
