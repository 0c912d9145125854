"""etcd failover past a hung (SIGSTOPped) member within a short TTL.

A SIGSTOPped member still accepts TCP connections (into the listen backlog)
and then never answers, so only a per-attempt time bound moves a request on.
"""

from __future__ import annotations

import logging

import pytest
import trio

import election2
from election2.mechanisms.etcd import EtcdFactory
from tests.etcd.conftest import EtcdMember

log = logging.getLogger("tests.etcd")


def ordered_url(members: list[EtcdMember], prefix: str, ttl: float) -> str:
    return f"etcd://{','.join(m.endpoint for m in members)}/{prefix}?ttl={ttl:g}"


def uses(factory: EtcdFactory, member: EtcdMember) -> bool:
    return factory.client.endpoint.endswith(member.endpoint)


@pytest.mark.parametrize("ttl", [4, 5])
async def test_hung_first_member_does_not_end_mastership(
    etcd_cluster: list[EtcdMember], prefix: str, ttl: int
) -> None:
    hung = etcd_cluster[0]
    url = ordered_url(etcd_cluster, prefix, ttl)
    async with election2.open_factory(url, instance_id="a") as factory:
        assert isinstance(factory, EtcdFactory)
        election = await factory.new_election("job")
        await election.await_mastership()
        token = election.fencing_token
        assert uses(factory, hung)
        try:
            async with election.with_mastership() as scope:
                paused_at = trio.current_time()
                hung.pause()
                while uses(factory, hung):
                    await trio.sleep(0.01)
                moved_on = trio.current_time() - paused_at
                log.info("ttl %d: moved on from the hung member after %.3f s", ttl, moved_on)
                await trio.sleep(paused_at + 2 * ttl - trio.current_time())
        finally:
            hung.resume()
        assert not scope.cancelled_caught
        assert election.is_master and election.fencing_token == token
        assert not uses(factory, hung)


async def test_opens_and_wins_with_first_member_hung(
    etcd_cluster: list[EtcdMember], prefix: str
) -> None:
    hung = etcd_cluster[0]
    hung.pause()
    try:
        started = trio.current_time()
        with trio.fail_after(5):
            url = ordered_url(etcd_cluster, prefix, 4)
            async with election2.open_factory(url, instance_id="a") as factory:
                assert isinstance(factory, EtcdFactory)
                election = await factory.new_election("job")
                await election.await_mastership()
                took = trio.current_time() - started
                log.info("opened and won with the first member hung in %.3f s", took)
                assert election.is_master
                assert not uses(factory, hung)
    finally:
        hung.resume()
