"""The conformance suite against a real etcd."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager

import pytest

from election2 import Election, Factory
from election2.mechanisms.etcd import EtcdElection, EtcdFactory
from election2.testing.conformance import ElectionConformance
from tests.etcd.conftest import EtcdMember
from tests.faultproxy import ProxiedFactories

TTL = 3.0


class TestEtcdConformance(ElectionConformance):
    ttl = TTL

    @pytest.fixture(autouse=True)
    def _backend(self, etcd_server: EtcdMember, prefix: str) -> None:
        # Each instance through a fault proxy of its own, so it can be cut off.
        self.instances = ProxiedFactories(
            [etcd_server.endpoint], lambda hosts: f"etcd://{hosts[0]}/{prefix}?ttl={TTL:g}"
        )

    def open_factory(self, instance_id: str) -> AbstractAsyncContextManager[Factory]:
        return self.instances.open(instance_id)

    async def cut_off(self, factory: Factory) -> None:
        self.instances.cut_off(factory.instance_id)

    async def reconnect(self, factory: Factory) -> None:
        self.instances.reconnect(factory.instance_id)

    async def force_loss(self, factory: Factory, election: Election) -> None:
        assert isinstance(factory, EtcdFactory) and isinstance(election, EtcdElection)
        # An operator deletes the candidacy key; the watch tells the election.
        await factory.client.delete(f"{election.election_prefix}/{factory.lease_id:x}")
