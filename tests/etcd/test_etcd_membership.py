"""etcd membership: the presence key's layout, crashes, repairs, and quiet at rest.

A factory that joins puts ``<PREFIX>/member:<instance id>`` on its lease; the
conformance suite checks the behaviour, these checks what is particular to etcd.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

import election2
from election2.mechanisms.etcd import EtcdFactory
from election2.mechanisms.etcd._client import EtcdClient, KeyValue, b64
from tests.etcd.conftest import EtcdMember
from tests.faultproxy import proxies
from tests.processes import Candidate

log = logging.getLogger("tests.etcd")
TTL = 3.0


def url_of(member: EtcdMember, prefix: str) -> str:
    return f"etcd://{member.endpoint}/{prefix}?ttl={TTL:g}"


@asynccontextmanager
async def etcd_client(member: EtcdMember) -> AsyncIterator[EtcdClient]:
    """An operator's client (``etcdctl``)."""
    client = EtcdClient([f"http://{member.endpoint}"])
    try:
        yield client
    finally:
        await client.aclose()


@asynccontextmanager
async def etcd_factory(
    member: EtcdMember, prefix: str, instance_id: str
) -> AsyncIterator[EtcdFactory]:
    async with election2.open_factory(url_of(member, prefix), instance_id=instance_id) as factory:
        assert isinstance(factory, EtcdFactory)
        yield factory


async def revision_of(client: EtcdClient) -> int:
    _, revision = await client.range_prefix("\x00", limit=1)
    return revision


async def wait_for_presence(
    client: EtcdClient, key: str, limit: float, *, not_revision: int = 0
) -> tuple[KeyValue, float]:
    """The presence key once it exists (with another create revision than
    ``not_revision``), and when it was first seen."""
    with trio.fail_after(limit):
        while True:
            kv = await client.get(key)
            if kv is not None and kv.create_revision != not_revision:
                return kv, trio.current_time()
            await trio.sleep(0.01)


async def test_presence_key_layout_and_a_resource_named_like_it(
    etcd_server: EtcdMember, prefix: str
) -> None:
    async with etcd_client(etcd_server) as client:
        async with (
            etcd_factory(etcd_server, prefix, "a") as fa,
            etcd_factory(etcd_server, prefix, "b") as fb,
        ):
            assert await fa.members() == {"a"}
            # Two segments under the prefix, on the factory's lease, value = instance id.
            kvs, _ = await client.range_prefix(prefix + "/")
            assert [(kv.key, kv.value, kv.lease) for kv in kvs] == [
                (f"{prefix}/member:a", "a", fa.lease_id)
            ]
            # A resource named like a's presence key: its keys go below it, and
            # neither side sees the other.
            named_like = await fb.new_election("member:a")
            assert await named_like.leader() is None
            async with named_like.observe() as leaders:
                assert await leaders.__anext__() is None
                await named_like.await_mastership()  # b joins too
                with trio.fail_after(TTL):
                    assert await leaders.__anext__() == "b"
            assert await fa.members() == await fb.members() == {"a", "b"}
            # What `etcdctl elect <prefix>/member:ghost ghost` would put: a
            # candidacy key of a resource, not a member.
            lease_id, _ = await client.lease_grant(int(TTL))
            await client.txn(
                [],
                [
                    {
                        "request_put": {
                            "key": b64(f"{prefix}/member:ghost/{lease_id:x}"),
                            "value": b64("ghost"),
                            "lease": str(lease_id),
                        }
                    }
                ],
                [],
            )
            async with fa.observe_members() as members:
                assert await members.__anext__() == {"a", "b"}
            assert await fa.members() == {"a", "b"}
            assert await (await fa.new_election("member:ghost")).leader() == "ghost"
            await client.lease_revoke(lease_id)
            # b gives the resource up: a's presence key (a prefix of that key's name) stays.
            await named_like.resign()
            assert (await client.get(f"{prefix}/member:a")) is not None
            assert await fb.members() == {"a", "b"}
            kvs, _ = await client.range_prefix(prefix + "/")
            assert sorted(kv.key for kv in kvs) == [f"{prefix}/member:a", f"{prefix}/member:b"]
        # Closing revokes the leases: nothing left.
        kvs, _ = await client.range_prefix(prefix + "/")
        assert kvs == []


async def test_a_killed_member_is_gone_within_a_ttl_and_a_second(
    etcd_server: EtcdMember, prefix: str
) -> None:
    url = url_of(etcd_server, prefix)
    async with etcd_factory(etcd_server, prefix, "survivor") as factory:
        candidate = Candidate(url, "job", "doomed")  # campaigning joins
        async with trio.open_nursery() as nursery:
            await nursery.start(candidate.run)
            async with factory.observe_members() as changes:
                with trio.fail_after(30):
                    await candidate.wait_for("WORK")
                    async for members in changes:
                        if members == {"survivor", "doomed"}:
                            break
                killed_at = time.monotonic()
                candidate.signal(signal.SIGKILL)
                with trio.fail_after(TTL + 2):
                    async for members in changes:
                        if members == {"survivor"}:
                            break
                took = time.monotonic() - killed_at
            nursery.cancel_scope.cancel()
        assert await factory.members() == {"survivor"}
    log.info("member SIGKILLed -> gone from the members after %.3f s (ttl %.1f s)", took, TTL)
    assert took < TTL + 1


async def test_a_deleted_presence_key_comes_back_at_the_next_renewal(
    etcd_server: EtcdMember, prefix: str
) -> None:
    async with etcd_client(etcd_server) as client, etcd_factory(etcd_server, prefix, "a") as fa:
        await fa.members()
        key = f"{prefix}/member:a"
        before = await client.get(key)
        assert before is not None
        await client.delete(key)  # an operator's `etcdctl del`
        deleted_at = trio.current_time()
        kv, back_at = await wait_for_presence(client, key, fa.renew_interval * 2)
        log.info(
            "deleted presence key back after %.3f s (renew interval %.2f s)",
            back_at - deleted_at,
            fa.renew_interval,
        )
        assert back_at - deleted_at < fa.renew_interval + 0.3
        assert kv.lease == before.lease == fa.lease_id
        assert kv.value == "a" and kv.create_revision > before.create_revision
        assert await fa.members() == {"a"}


async def test_a_revoked_lease_is_replaced_and_the_member_is_back_without_a_campaign(
    etcd_server: EtcdMember, prefix: str
) -> None:
    async with etcd_client(etcd_server) as client, etcd_factory(etcd_server, prefix, "a") as fa:
        election = await fa.new_election("job")
        await election.await_mastership()
        old_lease = fa.lease_id
        assert old_lease is not None
        key = f"{prefix}/member:a"
        before = await client.get(key)
        assert before is not None
        await client.lease_revoke(old_lease)  # as if it expired in an outage
        revoked_at = trio.current_time()
        kv, back_at = await wait_for_presence(
            client, key, fa.renew_interval * 2, not_revision=before.create_revision
        )
        log.info(
            "lease revoked -> presence key back on a new lease after %.3f s", back_at - revoked_at
        )
        assert back_at - revoked_at < fa.renew_interval + 0.3
        assert kv.lease == fa.lease_id and kv.lease != old_lease
        assert not election.is_master  # its term was on the old lease
        assert await fa.members() == {"a"}


async def test_a_member_cut_off_past_its_ttl_is_back_within_a_retry_interval(
    etcd_server: EtcdMember, prefix: str
) -> None:
    async with (
        proxies([etcd_server.endpoint]) as (proxy,),
        election2.open_factory(
            f"etcd://{proxy.endpoint}/{prefix}?ttl={TTL:g}", instance_id="a"
        ) as fa,
        etcd_factory(etcd_server, prefix, "b") as fb,
    ):
        assert isinstance(fa, EtcdFactory)
        await fa.members()  # joined; no campaign anywhere
        async with fb.observe_members() as changes:

            async def until(expected: set[str], limit: float) -> float:
                with trio.fail_after(limit):
                    async for members in changes:
                        if members == expected:
                            break
                return trio.current_time()

            await until({"a", "b"}, TTL)
            proxy.refuse()
            cut_at = trio.current_time()
            gone_at = await until({"b"}, TTL + 1)
            old_lease = fa.lease_id
            proxy.forward()
            reconnected_at = trio.current_time()
            back_at = await until({"a", "b"}, TTL)
        log.info(
            "cut off: gone after %.3f s; reconnected: back after %.3f s (retry interval %.2f s)",
            gone_at - cut_at,
            back_at - reconnected_at,
            fa.retry_interval,
        )
        assert back_at - reconnected_at < fa.renew_interval
        assert fa.lease_id is not None and fa.lease_id != old_lease


async def test_membership_writes_nothing_at_rest_and_readers_write_nothing(
    own_etcd: EtcdMember, prefix: str
) -> None:
    async with etcd_client(own_etcd) as client:
        async with (
            etcd_factory(own_etcd, prefix, "a") as fa,
            etcd_factory(own_etcd, prefix, "b") as fb,
            etcd_factory(own_etcd, prefix, "reader") as reader,
        ):
            await fa.members()
            await (await fb.new_election("job")).await_mastership()
            with trio.fail_after(TTL):
                while await fa.members() != {"a", "b"}:
                    await trio.sleep(0.01)
            async with fa.observe_members() as changes:  # renewals check the watch too
                assert await changes.__anext__() == {"a", "b"}
                assert await (await reader.new_election("job")).leader() == "b"  # a read
                start = await revision_of(client)
                await trio.sleep(fa.renew_interval * 3.5)
                end = await revision_of(client)
            assert reader.lease_id is None
        log.info("revision at rest: %d -> %d over %.1f s", start, end, fa.renew_interval * 3.5)
        assert end == start
