"""The conformance suite against real Redis masters (3 and 5 nodes)."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager

import pytest

import election2
from election2 import Election, Factory
from election2.mechanisms.redis import RedisElection, RedisFactory
from election2.testing.conformance import ElectionConformance
from tests.redis.conftest import RedisNodeProcess, url_of

TTL = 2.0


class TestRedisConformance(ElectionConformance):
    ttl = TTL

    @pytest.fixture(autouse=True)
    def _backend(self, redis3: list[RedisNodeProcess], prefix: str) -> None:
        self.url = url_of(redis3, prefix, TTL)

    def open_factory(self, instance_id: str) -> AbstractAsyncContextManager[Factory]:
        return election2.open_factory(self.url, instance_id=instance_id)

    async def force_loss(self, factory: Factory, election: Election) -> None:
        assert isinstance(factory, RedisFactory) and isinstance(election, RedisElection)
        # An operator deletes the lock on every node; the next extension is refused.
        for node in factory.nodes:
            await node.client.delete([election.key])
