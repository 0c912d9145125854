"""The conformance suite against a real etcd."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager

import pytest

import election2
from election2 import Election, Factory
from election2.mechanisms.etcd import EtcdElection, EtcdFactory
from election2.testing.conformance import ElectionConformance
from tests.etcd.conftest import EtcdMember

TTL = 3.0


class TestEtcdConformance(ElectionConformance):
    ttl = TTL

    @pytest.fixture(autouse=True)
    def _backend(self, etcd_server: EtcdMember, prefix: str) -> None:
        self.url = f"etcd://{etcd_server.endpoint}/{prefix}?ttl={TTL:g}"

    def open_factory(self, instance_id: str) -> AbstractAsyncContextManager[Factory]:
        return election2.open_factory(self.url, instance_id=instance_id)

    async def force_loss(self, factory: Factory, election: Election) -> None:
        assert isinstance(factory, EtcdFactory) and isinstance(election, EtcdElection)
        # An operator deletes the candidacy key; the watch tells the election.
        await factory.client.delete(f"{election.election_prefix}/{factory.lease_id:x}")
