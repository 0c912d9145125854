"""etcd under faults: paused or killed servers and masters, interop, bad input."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time

import pytest
import trio

import election2
from election2 import ConfigurationError, MechanismUnavailableError
from election2.mechanisms.etcd import EtcdElection, EtcdFactory
from election2.mechanisms.etcd._client import EtcdClient, b64
from tests.etcd.conftest import EtcdMember
from tests.fault_checks import (
    killed_master_is_replaced,
    paused_master_never_works_again,
    two_candidates,
)
from tests.servers import free_port, require_binary

log = logging.getLogger("tests.etcd")
TTL = 3.0


def url_of(member: EtcdMember | list[EtcdMember], prefix: str, ttl: float = TTL) -> str:
    members = member if isinstance(member, list) else [member]
    return f"etcd://{','.join(m.endpoint for m in members)}/{prefix}?ttl={ttl:g}"


async def keys_under(member: EtcdMember, prefix: str) -> list[str]:
    client = EtcdClient([f"http://{member.endpoint}"])
    try:
        kvs, _ = await client.range_prefix(prefix)
        return [kv.key for kv in kvs]
    finally:
        await client.aclose()


async def test_paused_server_scope_closes_before_lease_expiry(
    own_etcd: EtcdMember, prefix: str
) -> None:
    async with election2.open_factory(url_of(own_etcd, prefix), instance_id="a") as factory:
        election = await factory.new_election("job")
        await election.await_mastership()
        await trio.sleep(0.2)
        async with election.with_mastership() as scope:
            stopped_at = trio.current_time()
            own_etcd.pause()
            try:
                with trio.fail_after(TTL * 2):
                    await trio.sleep_forever()
            finally:
                closed_at = trio.current_time()
        own_etcd.resume()
        assert scope.cancelled_caught
        # The server cannot expire the lease earlier than TTL after the last
        # keepalive it received, which was before the pause.
        margin = stopped_at + TTL - closed_at
        log.info("scope closed %.3f s before the earliest possible server expiry", margin)
        assert margin > 0
        assert not election.is_master
        # Once the server is back the lease is gone; the factory gets a new one
        # and the same election campaigns again without being re-created.
        with trio.fail_after(TTL * 4):
            await election.await_mastership()
        assert election.is_master


async def test_killing_the_member_in_use_keeps_mastership(
    etcd_cluster: list[EtcdMember], prefix: str
) -> None:
    async with election2.open_factory(url_of(etcd_cluster, prefix), instance_id="a") as factory:
        assert isinstance(factory, EtcdFactory)
        election = await factory.new_election("job")
        await election.await_mastership()
        token = election.fencing_token
        in_use = next(m for m in etcd_cluster if factory.client.endpoint.endswith(m.endpoint))
        async with election.with_mastership() as scope:
            in_use.kill()
            await trio.sleep(TTL * 2)
        assert not scope.cancelled_caught
        assert election.is_master and election.fencing_token == token
        assert not factory.client.endpoint.endswith(in_use.endpoint)
        assert await election.leader() == "a"


async def test_sigkilled_master_process_is_replaced_within_ttl(
    etcd_server: EtcdMember, prefix: str
) -> None:
    took = await killed_master_is_replaced(url_of(etcd_server, prefix), TTL)
    assert took <= TTL + 1


async def test_sigstopped_master_process_never_works_again(
    etcd_server: EtcdMember, prefix: str
) -> None:
    gap, _ = await paused_master_never_works_again(url_of(etcd_server, prefix), TTL)
    assert gap > 0


async def etcdctl_leader(member: EtcdMember, name: str) -> str:
    """The leader's value as ``etcdctl elect -l`` (Go's client) reports it."""
    listen = subprocess.Popen(
        [require_binary("etcdctl"), f"--endpoints={member.endpoint}", "elect", "-l", name],
        stdout=subprocess.PIPE,
        env={**os.environ, "ETCDCTL_API": "3"},
    )
    try:
        assert listen.stdout is not None
        with trio.fail_after(5):
            key = await trio.to_thread.run_sync(listen.stdout.readline)
            value = await trio.to_thread.run_sync(listen.stdout.readline)
        assert key.decode().startswith(name + "/")
        return value.decode().strip()
    finally:
        listen.kill()
        listen.wait(5)


async def test_interop_with_etcdctl_elect(etcd_server: EtcdMember, prefix: str) -> None:
    etcdctl = require_binary("etcdctl")
    name = f"{prefix}/job"
    async with election2.open_factory(url_of(etcd_server, prefix), instance_id="ours") as factory:
        election = await factory.new_election("job")
        await election.await_mastership()
        go = subprocess.Popen(
            [etcdctl, f"--endpoints={etcd_server.endpoint}", "elect", name, "go-client"],
            stdout=subprocess.PIPE,
            env={**os.environ, "ETCDCTL_API": "3"},
        )
        try:
            await trio.sleep(1)
            assert go.poll() is None  # etcdctl waits behind us...
            assert await etcdctl_leader(etcd_server, name) == "ours"  # ...and sees us lead
            assert await election.leader() == "ours"
            await election.resign()
            assert go.stdout is not None
            with trio.fail_after(5):
                line = await trio.to_thread.run_sync(go.stdout.readline)
            assert line.decode().startswith(name + "/")  # etcdctl won
            assert await election.leader() == "go-client"  # and we see it lead
            assert await etcdctl_leader(etcd_server, name) == "go-client"
            async with trio.open_nursery() as nursery:
                nursery.start_soon(election.await_mastership)
                await trio.sleep(1)
                assert not election.is_master  # never two leaders
                go.send_signal(signal.SIGINT)  # etcdctl resigns on interrupt
            assert election.is_master
            assert await etcdctl_leader(etcd_server, name) == "ours"
        finally:
            go.kill()
            go.wait(5)


async def test_stale_master_write_is_rejected(etcd_server: EtcdMember, prefix: str) -> None:
    url = url_of(etcd_server, prefix)
    async with election2.open_factory(url, instance_id="a") as fa:
        async with election2.open_factory(url, instance_id="b") as fb:
            ea, eb = await fa.new_election("job"), await fb.new_election("job")
            assert isinstance(ea, EtcdElection) and isinstance(eb, EtcdElection)
            assert isinstance(fa, EtcdFactory)
            await ea.await_mastership()
            assert await ea.put_if_master(f"{prefix}-data/x", "from-a")
            stale_guard = ea.fencing_guard()
            assert stale_guard is not None
            await ea.resign()
            await eb.await_mastership()
            assert not await ea.put_if_master(f"{prefix}-data/x", "late")
            # A deposed master that kept its guard cannot write either.
            put = {"request_put": {"key": b64(f"{prefix}-data/x"), "value": b64("stale")}}
            answer = await fa.client.txn([stale_guard], [put], [])
            assert not answer.get("succeeded")
            assert await eb.put_if_master(f"{prefix}-data/x", "from-b")
            value = await fa.client.get(f"{prefix}-data/x")
            assert value is not None and value.value == "from-b"


async def test_unreachable_endpoint_fails_within_timeout(prefix: str) -> None:
    url = f"etcd://127.0.0.1:{free_port()}/{prefix}?ttl=3&timeout=0.5"
    started = time.monotonic()
    with pytest.raises(MechanismUnavailableError) as caught:
        async with election2.open_factory(url):
            pass
    assert time.monotonic() - started < 2
    assert url in str(caught.value)


@pytest.mark.parametrize("query", ["ttl=0", "ttl=-1", "ttl=abc", "ttl=1e9", "timeout=0", "tls=1"])
async def test_bad_options_rejected_and_nothing_left(
    etcd_server: EtcdMember, prefix: str, query: str
) -> None:
    with pytest.raises(ConfigurationError, match=query.split("=")[1].replace("+", "")):
        async with election2.open_factory(f"etcd://{etcd_server.endpoint}/{prefix}?{query}"):
            pass
    assert await keys_under(etcd_server, prefix) == []


@pytest.mark.parametrize("bad_prefix", ["a//b", "%00x"])
async def test_bad_prefix_rejected(etcd_server: EtcdMember, bad_prefix: str) -> None:
    with pytest.raises(ConfigurationError, match="prefix"):
        async with election2.open_factory(f"etcd://{etcd_server.endpoint}/{bad_prefix}"):
            pass


async def test_nothing_left_after_close(etcd_server: EtcdMember, prefix: str) -> None:
    async with election2.open_factory(url_of(etcd_server, prefix), instance_id="a") as factory:
        for name in ("one", "two"):
            await (await factory.new_election(name)).await_mastership()
        assert len(await keys_under(etcd_server, prefix)) == 3  # two candidacies, a presence
        lease_id = factory.lease_id  # type: ignore[attr-defined]
    assert await keys_under(etcd_server, prefix) == []
    client = EtcdClient([f"http://{etcd_server.endpoint}"])
    try:
        assert await client.lease_keep_alive(lease_id) == 0  # revoked
    finally:
        await client.aclose()


async def test_observe_follows_handover(etcd_server: EtcdMember, prefix: str) -> None:
    url = url_of(etcd_server, prefix)
    seen: list[str | None] = []
    async with two_candidates(url) as (ea, eb):
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                async with eb.observe() as changes:
                    async for leader in changes:
                        seen.append(leader)
                        if leader == "b":
                            return

            nursery.start_soon(watch)
            await ea.await_mastership()
            nursery.start_soon(eb.await_mastership)
            await trio.sleep(0.5)
            await ea.resign()
    assert seen == [None, "a", "b"]
