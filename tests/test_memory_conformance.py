"""The conformance suite on the in-memory mechanism, under trio's MockClock."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager

import pytest

from election2 import Election, Factory
from election2.mechanisms.memory import MemoryBackend, MemoryFactory
from election2.testing.conformance import ElectionConformance

TTL = 10.0


@pytest.mark.autojump_clock
class TestMemoryConformance(ElectionConformance):
    ttl = TTL

    @pytest.fixture(autouse=True)
    def _backend(self) -> None:
        self.backend = MemoryBackend(ttl=TTL)

    def open_factory(self, instance_id: str) -> AbstractAsyncContextManager[Factory]:
        return self.backend.open_factory(instance_id)

    async def force_loss(self, factory: Factory, election: Election) -> None:
        assert isinstance(factory, MemoryFactory)
        # An operator deletes the candidacy; the next renewal finds the term gone.
        self.backend._withdraw(election.resource_id, factory.instance_id)

    async def cut_off(self, factory: Factory) -> None:
        self.backend.partition(factory.instance_id)

    async def reconnect(self, factory: Factory) -> None:
        self.backend.heal(factory.instance_id)
