"""The conformance suite against real Redis masters (3 and 5 nodes)."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager

import pytest

from election2 import Election, Factory
from election2.mechanisms.redis import RedisElection, RedisFactory
from election2.testing.conformance import ElectionConformance
from tests.faultproxy import ProxiedFactories
from tests.redis.conftest import RedisNodeProcess

TTL = 2.0


class TestRedisConformance(ElectionConformance):
    ttl = TTL

    @pytest.fixture(autouse=True)
    def _backend(self, redis3: list[RedisNodeProcess], prefix: str) -> None:
        # Each instance through fault proxies of its own, so it can be cut off.
        self.instances = ProxiedFactories(
            [node.endpoint for node in redis3],
            # Proxies share the test's event loop: allow them a little more time.
            lambda hosts: f"redis://{','.join(hosts)}/{prefix}?ttl={TTL:g}&node_timeout=0.25",
        )

    def open_factory(self, instance_id: str) -> AbstractAsyncContextManager[Factory]:
        return self.instances.open(instance_id)

    async def cut_off(self, factory: Factory) -> None:
        self.instances.cut_off(factory.instance_id)

    async def reconnect(self, factory: Factory) -> None:
        self.instances.reconnect(factory.instance_id)

    async def force_loss(self, factory: Factory, election: Election) -> None:
        assert isinstance(factory, RedisFactory) and isinstance(election, RedisElection)
        # An operator deletes the lock on every node; the next extension is refused.
        for node in factory.nodes:
            await node.client.execute("DEL", election.key)
