"""Closing an etcd factory: one lease revocation, whatever it holds."""

from __future__ import annotations

from tests.close_checks import check_close_keeps_to_its_timeout, requests_of_close
from tests.etcd.conftest import EtcdMember, log_requests
from tests.etcd.test_etcd_faults import keys_under


async def test_close_revokes_the_lease_whatever_the_factory_holds(
    etcd_server: EtcdMember, prefix: str
) -> None:
    url = f"etcd://{etcd_server.endpoint}/{prefix}?ttl=5"
    one = await requests_of_close(url, 1, log_requests)
    many = await requests_of_close(url, 500, log_requests)
    print(f"requests to close: 1 election {one}, 500 elections {many}")
    assert one == many == ["/v3/lease/revoke"]
    assert await keys_under(etcd_server, prefix) == []


async def test_close_keeps_to_close_timeout_when_etcd_stops_answering(
    etcd_server: EtcdMember, prefix: str
) -> None:
    await check_close_keeps_to_its_timeout(
        [etcd_server.endpoint],
        lambda endpoints: f"etcd://{endpoints[0]}/{prefix}?ttl=5&close_timeout=1",
        lambda: keys_under(etcd_server, prefix),
        expire_within=7,  # the lease expires: nothing is left behind
    )
