"""A sharded fleet of three processes on a real etcd."""

from __future__ import annotations

from tests.etcd.conftest import EtcdMember, store_revision
from tests.sharding_checks import fleet_balances_recovers_and_rests

TTL = 3.0


def test_fleet_balances_rests_and_recovers_from_a_sigkill(
    own_etcd: EtcdMember, prefix: str
) -> None:
    url = f"etcd://{own_etcd.endpoint}/{prefix}?ttl={TTL:g}"
    fleet_balances_recovers_and_rests(url, TTL, lambda: store_revision(own_etcd, prefix))
