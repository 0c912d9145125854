"""Redlock protocol details: release notices, batched extension, interop, fencing."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio

import election2
from election2 import ConfigurationError
from election2.mechanisms.redis import RedisElection, RedisFactory
from tests.fault_checks import two_candidates
from tests.redis.conftest import RedisNodeProcess, direct, url_of

log = logging.getLogger("tests.redis")
TTL = 2.0


async def redis_election(factory: election2.Factory, resource_id: str) -> RedisElection:
    election = await factory.new_election(resource_id)
    assert isinstance(election, RedisElection)
    return election


def redis_factory(factory: election2.Factory) -> RedisFactory:
    assert isinstance(factory, RedisFactory)
    return factory


async def test_waiter_is_woken_by_the_release_notice(
    redis3: list[RedisNodeProcess], prefix: str
) -> None:
    # ttl 30 s: the fallback poll comes after 1.5 s at the earliest.
    async with two_candidates(url_of(redis3, prefix, 30)) as (ea, eb):
        await ea.await_mastership()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(eb.await_mastership)
            await trio.sleep(0.3)
            resigned_at = trio.current_time()
            await ea.resign()
        took = trio.current_time() - resigned_at
        log.info("handover by notice: %.1f ms", took * 1000)
        assert eb.is_master and took < 1.0
        await eb.resign()


async def test_one_script_call_per_node_per_renewal(
    redis3: list[RedisNodeProcess], prefix: str
) -> None:
    async with election2.open_factory(url_of(redis3, prefix, TTL), instance_id="a") as f:
        factory = redis_factory(f)
        elections = [await redis_election(factory, f"r{i}") for i in range(200)]
        for election in elections:
            await election.await_mastership()
        factory._renewing.cancel()  # only our renewal below talks to the nodes
        calls = 0
        for node in factory.nodes:
            run = node.run

            async def counted(*args: Any, run: Callable[..., Awaitable[Any]] = run) -> Any:
                nonlocal calls
                calls += 1
                return await run(*args)

            node.run = counted  # type: ignore[method-assign,assignment]
        renewal = await factory._renew(list(elections))
        assert calls == len(factory.nodes)
        assert not renewal.refused and not renewal.unconfirmed


async def test_renewal_tells_refused_from_unconfirmed_keys(
    own_redis3: list[RedisNodeProcess], prefix: str
) -> None:
    """Key 'gone' is deleted everywhere (refused: ends at once); 'torn' only on
    node 0 while node 1 is paused (one yes, one no: unconfirmed, runs to its
    deadline); 'kept' is extended by the two nodes that answer."""
    async with election2.open_factory(url_of(own_redis3, prefix, TTL), instance_id="a") as f:
        factory = redis_factory(f)
        gone, torn, kept = [await redis_election(factory, r) for r in ("gone", "torn", "kept")]
        for election in (gone, torn, kept):
            await election.await_mastership()
        for node in factory.nodes:
            await node.client.execute("DEL", gone.key)
        await factory.nodes[0].client.execute("DEL", torn.key)
        own_redis3[1].pause()
        try:
            renewal = await factory._renew([gone, torn, kept])
            assert renewal.refused == {gone}
            assert renewal.unconfirmed == {torn}
            torn_deadline = torn._mastership.deadline
            async with torn.with_mastership() as scope:
                await trio.sleep_forever()
            ended_at = trio.current_time()
            log.info("unconfirmed term ended %.3f s after its deadline", ended_at - torn_deadline)
            assert scope.cancelled_caught and not torn.is_master
            assert ended_at >= torn_deadline
            assert not gone.is_master and kept.is_master
        finally:
            own_redis3[1].resume()


async def test_other_redlock_clients_are_excluded(
    redis3: list[RedisNodeProcess], prefix: str
) -> None:
    async with election2.open_factory(url_of(redis3, prefix, TTL), instance_id="a") as f:
        factory = redis_factory(f)
        election = await redis_election(factory, "job")
        await election.await_mastership()
        for node in factory.nodes:
            # What any Redlock client does to take the lock: SET NX PX.
            assert not await node.client.execute(
                "SET", election.key, "other:42", "NX", "PX", 10_000
            )
            value = await node.client.get(election.key)
            assert value is not None and value.startswith("a:") and len(value) >= 2 + 40
        await election.resign()
        for node in factory.nodes:
            assert await node.client.get(election.key) is None


async def test_fencing_survives_a_minority_restart(
    own_redis3: list[RedisNodeProcess], prefix: str
) -> None:
    async with two_candidates(url_of(own_redis3, prefix, TTL)) as (ea, eb):
        tokens: list[int] = []
        for election in (ea, eb, ea):
            await election.await_mastership()
            assert election.fencing_token is not None
            tokens.append(election.fencing_token)
            await election.resign()
        own_redis3[0].restart()  # forgets its counter; the other two remember
        for election in (eb, ea):
            await election.await_mastership()
            assert election.fencing_token is not None
            tokens.append(election.fencing_token)
            await election.resign()
        assert tokens == sorted(set(tokens)), tokens


@pytest.mark.parametrize("url", ["redis:///p", "redis://:6379/p", "redis://h1:6379,/p"])
async def test_no_node_is_refused(url: str) -> None:
    with pytest.raises(ConfigurationError):
        async with election2.open_factory(url):
            pass


async def test_an_open_factory_has_subscribed_on_every_node(
    redis3: list[RedisNodeProcess], prefix: str
) -> None:
    """Open returns once the listeners subscribed: a notice published right
    after opening (another instance's release) reaches this one."""
    async with direct(redis3) as clients:
        for instance_id in ("first", "second"):
            url = url_of(redis3, prefix, 3.0)
            async with election2.open_factory(url, instance_id=instance_id) as factory:
                assert isinstance(factory, RedisFactory)
                for client in clients:
                    _, subscribers = await client.execute("PUBSUB", "NUMSUB", factory.channel)
                    assert int(subscribers) == 1
