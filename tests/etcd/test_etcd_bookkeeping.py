"""etcd: what a renewal verifies, a silent watch, stale events, big batches, dead leases.

Each test here reproduces a hole found under faults; the margins are logged.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

import election2
from election2 import Election
from election2.mechanisms.etcd import EtcdElection, EtcdFactory
from election2.mechanisms.etcd._client import EtcdClient, b64
from tests.close_checks import hold
from tests.etcd.conftest import EtcdMember, log_requests
from tests.faultproxy import FaultProxy, proxies

log = logging.getLogger("tests.etcd")
TTL = 3.0


def url_of(endpoint: str, prefix: str, ttl: float = TTL) -> str:
    return f"etcd://{endpoint}/{prefix}?ttl={ttl:g}"


@asynccontextmanager
async def a_through_proxy_b_direct(
    server: EtcdMember, prefix: str
) -> AsyncIterator[tuple[FaultProxy, EtcdElection, EtcdElection]]:
    """Instance "a" reaches etcd through a fault proxy, "b" directly; both
    with an election of resource "job"."""
    async with proxies([server.endpoint]) as (proxy,):
        async with election2.open_factory(url_of(proxy.endpoint, prefix), instance_id="a") as fa:
            async with election2.open_factory(
                url_of(server.endpoint, prefix), instance_id="b"
            ) as fb:
                ea, eb = await fa.new_election("job"), await fb.new_election("job")
                assert isinstance(ea, EtcdElection) and isinstance(eb, EtcdElection)
                yield proxy, ea, eb


@asynccontextmanager
async def instance_a(
    server: EtcdMember, prefix: str
) -> AsyncIterator[tuple[EtcdFactory, EtcdElection]]:
    """Instance "a" with its election of resource "job"."""
    async with election2.open_factory(url_of(server.endpoint, prefix), instance_id="a") as fa:
        election = await fa.new_election("job")
        assert isinstance(fa, EtcdFactory) and isinstance(election, EtcdElection)
        yield fa, election


async def delete_key(server: EtcdMember, key: str) -> None:
    """What an operator's ``etcdctl del`` does."""
    client = EtcdClient([f"http://{server.endpoint}"])
    try:
        await client.delete(key)
    finally:
        await client.aclose()


async def wait_until_master(election: Election, limit: float) -> float:
    with trio.fail_after(limit):
        while not election.is_master:
            await trio.sleep(0.01)
    return trio.current_time()


async def test_deleted_key_ends_the_term_at_the_next_renewal_with_a_silent_watch(
    etcd_server: EtcdMember, prefix: str
) -> None:
    async with a_through_proxy_b_direct(etcd_server, prefix) as (proxy, ea, eb):
        await ea.await_mastership()
        factory = ea._factory
        async with trio.open_nursery() as nursery:
            nursery.start_soon(eb.await_mastership)
            await trio.sleep(0.3)
            # A NAT drops a's idle watch stream: it never delivers another event.
            proxy.silence_existing()
            async with ea.with_mastership() as scope:
                assert ea._candidacy is not None
                deleted_at = trio.current_time()
                await delete_key(etcd_server, ea._candidacy.key)
                b_won_at = await wait_until_master(eb, TTL)
                with trio.fail_after(TTL * 2):
                    await trio.sleep_forever()
            ended_at = trio.current_time()
        assert scope.cancelled_caught and not ea.is_master
        overlap = ended_at - b_won_at
        log.info(
            "silent watch: key deleted -> b master after %.3f s, a's scope ended %.3f s "
            "after the deletion (%.3f s of overlap; renew interval %.2f s)",
            b_won_at - deleted_at,
            ended_at - deleted_at,
            overlap,
            factory.renew_interval,
        )
        # The next renewal found the key gone (its first attempt may hang on a
        # silenced pooled connection for half its budget, then a fresh one answers).
        assert ended_at - deleted_at < 1.5 * factory.renew_interval + 0.3


async def test_observer_with_a_silent_watch_resyncs_within_a_ttl(
    etcd_server: EtcdMember, prefix: str
) -> None:
    async with a_through_proxy_b_direct(etcd_server, prefix) as (proxy, ea, eb):
        seen: list[tuple[str | None, float]] = []
        async with ea.observe() as changes:
            assert await changes.__anext__() is None
            proxy.silence_existing()
            await eb.await_mastership()
            changed_at = trio.current_time()
            with trio.fail_after(TTL):
                seen.append((await changes.__anext__(), trio.current_time()))
        assert seen[0][0] == "b"
        log.info("silent watch: observer saw the change after %.3f s", seen[0][1] - changed_at)


async def test_stale_delete_event_of_a_resigned_key_is_ignored(
    etcd_server: EtcdMember, prefix: str
) -> None:
    async with instance_a(etcd_server, prefix) as (fa, election):
        await election.await_mastership()
        assert election._candidacy is not None
        key = election._candidacy.key
        await election.resign()
        _, deleted_at = await fa.client.range_prefix(prefix + "/")
        await election.await_mastership()  # the same key name, a new create revision
        token = election.fencing_token
        # The watch delivers the DELETE of the resigned key late.
        fa._apply([{"type": "DELETE", "kv": {"key": b64(key), "mod_revision": str(deleted_at)}}])
        await trio.sleep(fa.renew_interval * 1.5)
        assert election.is_master and election.fencing_token == token
        assert await election.leader() == "a"
        await election.resign()  # deletes the key: nothing left on the live lease
        kvs, _ = await fa.client.range_prefix(prefix + "/")
        assert [kv.key for kv in kvs] == [f"{prefix}/member:a"]  # only the presence


async def test_resync_keeps_a_candidacy_put_while_the_read_was_in_flight(
    etcd_server: EtcdMember, prefix: str
) -> None:
    async with instance_a(etcd_server, prefix) as (fa, election):
        stale_answer = await fa.client.range_prefix(prefix + "/")  # before the put
        await election.await_mastership()
        token = election.fencing_token
        real_range = fa.client.range_prefix

        async def answered_before_the_put(*args: object, **kwargs: object) -> object:
            fa.client.range_prefix = real_range  # type: ignore[method-assign]
            return stale_answer

        fa.client.range_prefix = answered_before_the_put  # type: ignore[method-assign,assignment]
        await fa._sync()
        await trio.sleep(fa.renew_interval * 1.5)
        assert election.is_master and election.fencing_token == token
        await election.resign()
        await election.await_mastership()
        assert election.fencing_token is not None and token is not None
        assert election.fencing_token > token


async def test_257_concurrent_campaigns_fit_etcds_transaction_limit(
    etcd_server: EtcdMember, prefix: str
) -> None:
    async with election2.open_factory(url_of(etcd_server.endpoint, prefix), instance_id="a") as fa:
        elections = [await fa.new_election(f"r{i}") for i in range(257)]
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for election in elections:
                    nursery.start_soon(election.await_mastership)
        assert all(election.is_master for election in elections)


async def test_campaign_on_a_lease_that_expired_in_an_outage_takes_a_new_one(
    etcd_server: EtcdMember, prefix: str
) -> None:
    async with proxies([etcd_server.endpoint]) as (proxy,):
        async with election2.open_factory(url_of(proxy.endpoint, prefix), instance_id="a") as fa:
            assert isinstance(fa, EtcdFactory)
            first = await fa.new_election("first")
            await first.await_mastership()
            dead_lease = fa.lease_id
            fa._renewing.cancel()  # the renewals have not noticed the outage yet
            proxy.refuse()
            await trio.sleep(TTL + 1)  # etcd expires the lease
            proxy.forward()
            second = await fa.new_election("second")
            with trio.fail_after(TTL):
                await second.await_mastership()  # no raw "lease not found"
            assert second.is_master and fa.lease_id != dead_lease
            assert not first.is_master
            assert await second.leader() == "a"


async def test_an_uncontended_campaign_is_one_round_trip(
    etcd_server: EtcdMember, prefix: str
) -> None:
    """The put and the look at the queue share one transaction (Go's Campaign
    learns the owner in its put's txn too); a contended one still waits."""
    url = f"etcd://{etcd_server.endpoint}/{prefix}?ttl=5"
    async with (
        election2.open_factory(url, instance_id="a") as fa,
        election2.open_factory(url, instance_id="b") as fb,
    ):
        warm, ea = await fa.new_election("warm"), await fa.new_election("job")
        await warm.await_mastership()  # the lease and the membership are in place
        made = log_requests(fa)
        await ea.await_mastership()
        assert made == ["/v3/kv/txn"]
        eb = await fb.new_election("job")
        with trio.move_on_after(1) as waited:
            await eb.await_mastership()
        assert waited.cancelled_caught and not eb.is_master
        async with trio.open_nursery() as nursery:
            nursery.start_soon(eb.await_mastership)
            await trio.sleep(0.1)
            await ea.resign()
        assert eb.is_master and await ea.leader() == "b"


async def test_a_renewal_is_two_requests_however_many_terms(
    etcd_server: EtcdMember, prefix: str
) -> None:
    """The keepalive, and one read of the keys on the lease that verifies
    every held term (not one compare per term, 126 to a transaction)."""
    ttl = 3.0
    async with election2.open_factory(
        f"etcd://{etcd_server.endpoint}/{prefix}?ttl={ttl:g}", instance_id="a"
    ) as factory:
        elections = await hold(factory, 600)
        made = log_requests(factory)
        await trio.sleep(ttl / 3 * 2.5)
        assert all(election.is_master for election in elections)
    renewals = made.count("/v3/lease/keepalive")
    print(f"{renewals} renewals of 600 terms: {made}")
    assert renewals >= 2
    assert made[-1] == "/v3/lease/revoke"  # the close
    assert sorted(made[:-1]) == sorted(["/v3/lease/keepalive", "/v3/lease/timetolive"] * renewals)
