"""Redlock under faults: stopped and restarted nodes, killed and paused masters."""

from __future__ import annotations

import logging
import time

import pytest
import trio

import election2
from election2 import ConfigurationError, MechanismUnavailableError
from election2.mechanisms.redis import RedisElection, RedisFactory
from tests.fault_checks import (
    killed_master_is_replaced,
    paused_master_never_works_again,
    two_candidates,
)
from tests.redis.conftest import RedisNodeProcess, url_of
from tests.servers import free_port

log = logging.getLogger("tests.redis")
TTL = 2.0


async def test_one_node_of_three_down_keeps_working(
    own_redis3: list[RedisNodeProcess], prefix: str
) -> None:
    url = url_of(own_redis3, prefix, TTL)
    async with two_candidates(url) as (ea, eb):
        await ea.await_mastership()
        own_redis3[0].pause()
        try:
            async with ea.with_mastership() as scope:
                await trio.sleep(TTL * 2)  # several extensions on 2 of 3 nodes
            assert not scope.cancelled_caught and ea.is_master
            assert await eb.leader() == "a"
            async with trio.open_nursery() as nursery:
                nursery.start_soon(eb.await_mastership)
                await trio.sleep(0.2)
                assert not eb.is_master
                resigned_at = trio.current_time()
                await ea.resign()
            assert eb.is_master
            log.info(
                "handover with a node down: %.1f ms", (trio.current_time() - resigned_at) * 1000
            )
        finally:
            own_redis3[0].resume()


async def test_two_nodes_of_three_down_ends_mastership_in_time(
    own_redis3: list[RedisNodeProcess], prefix: str
) -> None:
    url = url_of(own_redis3, prefix, TTL)
    async with two_candidates(url) as (ea, eb):
        await ea.await_mastership()
        await trio.sleep(0.3)
        async with ea.with_mastership() as scope:
            stopped_at = trio.current_time()
            own_redis3[0].pause()
            own_redis3[1].pause()
            with trio.fail_after(TTL * 2):
                await trio.sleep_forever()
        closed_at = trio.current_time()
        assert scope.cancelled_caught and not ea.is_master
        # The last extension that counted started before the pause; its
        # validity window closes at its start + ttl: we stopped before that.
        margin = stopped_at + TTL - closed_at
        log.info("two of three down: scope closed %.3f s before validity ended", margin)
        assert margin > 0
        # Nobody else can win while a quorum is unreachable.
        with pytest.raises(MechanismUnavailableError) as caught:
            await eb.await_mastership()
        assert own_redis3[0].endpoint in str(caught.value)
        assert not eb.is_master
        own_redis3[0].resume()
        own_redis3[1].resume()
        with trio.fail_after(TTL * 3):
            await eb.await_mastership()
        assert eb.is_master


async def test_restart_of_one_node_without_persistence_is_tolerated(
    own_redis3: list[RedisNodeProcess], prefix: str
) -> None:
    url = url_of(own_redis3, prefix, TTL)
    async with two_candidates(url) as (ea, eb):
        await ea.await_mastership()
        own_redis3[2].restart()  # forgets the lock and the fencing counter
        async with ea.with_mastership() as scope:
            with trio.move_on_after(TTL * 2):
                await eb.await_mastership()  # wins the restarted node only
        assert not scope.cancelled_caught and ea.is_master and not eb.is_master
        assert await eb.leader() == "a"


async def test_restart_of_a_majority_without_persistence_is_documented_unsafe(
    own_redis3: list[RedisNodeProcess], prefix: str
) -> None:
    """What the docs warn about: a majority that forgets its keys lets a second
    master in (until the first's next extension is refused) and resets the
    fencing counters. Hence the "delayed restart" advice."""
    url = url_of(own_redis3, prefix, TTL)
    async with two_candidates(url) as (ea, eb):
        for _ in range(3):
            await ea.await_mastership()
            await ea.resign()
        await ea.await_mastership()
        old_token = ea.fencing_token
        assert old_token is not None and old_token >= 4
        own_redis3[0].restart()
        own_redis3[1].restart()
        async with ea.with_mastership() as scope:
            await eb.await_mastership()
            assert eb.fencing_token is not None and eb.fencing_token < old_token
            with trio.fail_after(TTL):
                await trio.sleep_forever()  # a's next extension is refused
        assert scope.cancelled_caught and not ea.is_master


async def test_sigkilled_master_process_is_replaced(
    redis3: list[RedisNodeProcess], prefix: str
) -> None:
    took = await killed_master_is_replaced(url_of(redis3, prefix, TTL), TTL)
    assert took <= TTL + 1


async def test_sigstopped_master_process_never_works_again(
    redis3: list[RedisNodeProcess], prefix: str
) -> None:
    gap, _ = await paused_master_never_works_again(url_of(redis3, prefix, TTL), TTL)
    assert gap > 0


async def test_five_nodes_tolerate_two_down(
    own_redis5: list[RedisNodeProcess], prefix: str
) -> None:
    url = url_of(own_redis5, prefix, TTL)
    async with election2.open_factory(url, instance_id="a") as fa:
        assert isinstance(fa, RedisFactory) and fa.quorum == 3
        election = await fa.new_election("job")
        own_redis5[0].pause()
        own_redis5[1].pause()
        try:
            await election.await_mastership()
            async with election.with_mastership() as scope:
                await trio.sleep(TTL)
            assert not scope.cancelled_caught
            own_redis5[2].pause()
            with trio.fail_after(TTL * 2):
                while election.is_master:
                    await trio.sleep(0.05)
        finally:
            for node in own_redis5:
                node.resume()


async def test_unreachable_nodes_are_named(prefix: str) -> None:
    ports = [free_port(), free_port(), free_port()]
    url = f"redis://{','.join(f'127.0.0.1:{p}' for p in ports)}/{prefix}?ttl=2"
    started = time.monotonic()
    with pytest.raises(MechanismUnavailableError) as caught:
        async with election2.open_factory(url):
            pass
    assert time.monotonic() - started < 3
    for port in ports:
        assert f"127.0.0.1:{port}" in str(caught.value)


async def test_even_node_count_warns(
    redis3: list[RedisNodeProcess], prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    url = url_of(redis3[:2], prefix, TTL)
    with caplog.at_level(logging.WARNING, logger="election2.redis"):
        async with election2.open_factory(url, instance_id="a") as factory:
            election = await factory.new_election("job")
            await election.await_mastership()
    assert "even number of nodes (2)" in caplog.text


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ("ttl=0", "0"),
        ("ttl=never", "never"),
        ("node_timeout=5", "node_timeout=5"),
        ("key_template={prefix}", "resource"),
        ("key_template={nope}/{resource}", "nope"),
        ("colour=red", "colour"),
    ],
)
async def test_bad_options_rejected(
    redis3: list[RedisNodeProcess], prefix: str, query: str, fragment: str
) -> None:
    hosts = ",".join(n.endpoint for n in redis3)
    with pytest.raises(ConfigurationError, match=fragment):
        async with election2.open_factory(f"redis://{hosts}/{prefix}?{query}"):
            pass


async def test_duplicate_node_rejected(redis3: list[RedisNodeProcess], prefix: str) -> None:
    node = redis3[0].endpoint
    with pytest.raises(ConfigurationError, match="twice"):
        async with election2.open_factory(f"redis://{node},{node},{redis3[1].endpoint}/{prefix}"):
            pass


async def test_failed_acquire_leaves_no_key(redis3: list[RedisNodeProcess], prefix: str) -> None:
    url = url_of(redis3, prefix, TTL)
    async with election2.open_factory(url, instance_id="b") as fb:
        assert isinstance(fb, RedisFactory)
        eb = await fb.new_election("job")
        assert isinstance(eb, RedisElection)
        # Someone else holds the lock on two nodes; the third is free.
        for node in fb.nodes[:2]:
            await node.client.execute("SET", eb.key, "other:0123", "PX", 10_000)
        with trio.move_on_after(0.5):
            await eb.await_mastership()
        assert not eb.is_master
        assert await fb.nodes[2].client.get(eb.key) is None
        assert await eb.leader() == "other"
