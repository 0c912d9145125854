"""A sharded fleet of three processes on a real etcd."""

from __future__ import annotations

import trio

from election2.mechanisms.etcd._client import EtcdClient
from tests.etcd.conftest import EtcdMember
from tests.sharding_checks import fleet_balances_recovers_and_rests

TTL = 3.0


def test_fleet_balances_rests_and_recovers_from_a_sigkill(
    own_etcd: EtcdMember, prefix: str
) -> None:
    def revision() -> int:  # every write to etcd bumps it; keepalives do not
        async def read() -> int:
            client = EtcdClient([f"http://{own_etcd.endpoint}"])
            try:
                return (await client.range_prefix(prefix))[1]
            finally:
                await client.aclose()

        return trio.run(read)

    url = f"etcd://{own_etcd.endpoint}/{prefix}?ttl={TTL:g}"
    fleet_balances_recovers_and_rests(url, TTL, revision)
