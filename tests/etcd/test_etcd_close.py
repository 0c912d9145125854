"""Closing an etcd factory: one lease revocation, whatever it holds."""

from __future__ import annotations

import trio

from tests.close_checks import close_while_unreachable, requests_of_close
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
    took = await close_while_unreachable(
        [etcd_server.endpoint],
        lambda endpoints: f"etcd://{endpoints[0]}/{prefix}?ttl=5&close_timeout=1",
        50,
    )
    print(f"close of 50 elections, etcd silent, close_timeout 1 s: {took:.2f} s")
    assert took < 1.5
    with trio.fail_after(7):  # the lease expires: nothing is left behind
        while await keys_under(etcd_server, prefix):
            await trio.sleep(0.2)
