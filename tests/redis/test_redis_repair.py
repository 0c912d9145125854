"""Redlock after minority faults: keys set again, lost rounds quiet, releases retryable.

Instance "a" reaches the nodes through fault proxies of its own (one per
node); "b" and "c" connect directly, and so do the checks of the nodes' state.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import trio

import election2
from election2 import MechanismUnavailableError
from election2.mechanisms.redis import RedisElection, RedisFactory
from election2.mechanisms.redis._redlock import RedisNode, failures, fan_out
from tests.faultproxy import FaultProxy, proxies
from tests.redis.conftest import RedisNodeProcess, direct, url_of

log = logging.getLogger("tests.redis")
TTL = 2.0


@contextlib.asynccontextmanager
async def proxied(
    nodes: list[RedisNodeProcess], prefix: str, ttl: float, instance_id: str
) -> AsyncIterator[tuple[RedisFactory, list[FaultProxy]]]:
    """A factory that reaches each node through a fault proxy of its own."""
    async with proxies([node.endpoint for node in nodes]) as px:
        hosts = ",".join(proxy.endpoint for proxy in px)
        url = f"redis://{hosts}/{prefix}?ttl={ttl:g}"
        async with election2.open_factory(url, instance_id=instance_id) as factory:
            assert isinstance(factory, RedisFactory)
            yield factory, px


async def ping(node: RedisNode) -> object:
    return await node.client.ping()


async def redis_election(factory: election2.Factory, resource_id: str) -> RedisElection:
    election = await factory.new_election(resource_id)
    assert isinstance(election, RedisElection)
    return election


async def test_term_outlives_one_minority_fault_after_another(
    own_redis3: list[RedisNodeProcess], prefix: str
) -> None:
    """Node 0 is cut off from a until a's key there expires, then node 1: never
    more than one node at a time, so a stays master and b never wins."""
    async with (
        proxied(own_redis3, prefix, TTL, "a") as (fa, px),
        election2.open_factory(url_of(own_redis3, prefix, TTL), instance_id="b") as fb,
        direct(own_redis3) as nodes,
    ):
        ea, eb = await redis_election(fa, "job"), await redis_election(fb, "job")
        await ea.await_mastership()
        token = ea.fencing_token
        assert token is not None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(eb.await_mastership)  # b waits all along
            px[0].blackhole()
            await trio.sleep(TTL + 0.5)
            assert await nodes[0].get(ea.key) != ea._value  # expired there
            px[0].forward()
            healed = trio.current_time()
            # Seen missing at one renewal, set again at the next.
            with trio.fail_after(2 * fa.renew_interval + 0.5):
                while await nodes[0].get(ea.key) != ea._value:
                    await trio.sleep(0.02)
            repaired = trio.current_time() - healed
            assert int(await nodes[0].get(ea.token_key) or 0) >= token
            async with ea.with_mastership() as scope:
                px[1].blackhole()
                cut = trio.current_time()
                headroom = TTL
                while trio.current_time() < cut + TTL + 1:  # a's key on node 1 expires
                    headroom = min(headroom, scope.deadline - trio.current_time())
                    await trio.sleep(0.05)
                px[1].forward()
            assert not scope.cancelled_caught and ea.is_master
            assert not eb.is_master and await eb.leader() == "a"
            nursery.cancel_scope.cancel()
        log.info(
            "key on node 0 set again %.3f s after the heal (renewal interval %.3f s); "
            "least headroom while node 1 was cut off: %.3f s",
            repaired,
            fa.renew_interval,
            headroom,
        )
        assert headroom > 0


async def test_lost_rounds_do_not_wake_each_other(
    own_redis3: list[RedisNodeProcess], prefix: str
) -> None:
    """a holds nodes 0 and 1 but cannot reach node 2, which stays free: b and
    c, waiting, win it in every round and lose the round. Their undo must not
    wake the other into a round of its own, back to back."""
    seconds = 3.0
    async with (
        proxied(own_redis3, prefix, TTL, "a") as (fa, px),
        election2.open_factory(url_of(own_redis3, prefix, TTL), instance_id="b") as fb,
        election2.open_factory(url_of(own_redis3, prefix, TTL), instance_id="c") as fc,
        direct(own_redis3) as nodes,
    ):
        assert isinstance(fb, RedisFactory)
        px[2].blackhole()
        ea = await redis_election(fa, "job")
        await ea.await_mastership()
        waiters = [await redis_election(fb, "job"), await redis_election(fc, "job")]

        async def evals() -> int:
            stats = await nodes[2].info("commandstats")
            return sum(
                int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))
                for name in ("eval", "evalsha")
            )

        async def counter() -> int:
            return int(await nodes[2].get(ea.key + ":fencing") or 0)

        counter_before, evals_before = await counter(), await evals()
        async with ea.with_mastership() as scope, trio.open_nursery() as nursery:
            for election in waiters:
                nursery.start_soon(election.await_mastership)
            await trio.sleep(seconds)
            nursery.cancel_scope.cancel()
        rounds, calls = await counter() - counter_before, await evals() - evals_before
        # Every wait after a lost round is at least half its backoff, which
        # doubles from poll/16 to the poll interval: at most 5 rounds before
        # it gets there, then one per half poll interval.
        bound = len(waiters) * (5 + seconds / (fb.poll_interval / 2))
        log.info(
            "%d waiters, %.0f s, node 2 free: %d rounds won there, %d script calls "
            "(bound %.0f rounds)",
            len(waiters),
            seconds,
            rounds,
            calls,
            bound,
        )
        assert rounds <= bound
        assert not scope.cancelled_caught and ea.is_master
        assert not any(election.is_master for election in waiters)


async def test_failed_release_can_be_retried(
    own_redis3: list[RedisNodeProcess], prefix: str
) -> None:
    """A release that reached one node of three is not confirmed; a later
    release still knows what to delete. (The core retries it in the background
    too; called here directly, this checks the mechanism's part alone. ttl 10
    s: nothing expires meanwhile.)"""
    async with proxied(own_redis3, prefix, 10, "a") as (fa, px), direct(own_redis3) as nodes:
        ea = await redis_election(fa, "job")
        await ea.await_mastership()
        px[0].blackhole()
        px[1].blackhole()
        started = trio.current_time()
        with contextlib.suppress(MechanismUnavailableError), trio.fail_after(fa.close_timeout + 1):
            await ea.resign()  # raises, or returns and retries in the background
        log.info(
            "resign with 2 of 3 nodes cut off returned after %.3f s", trio.current_time() - started
        )
        assert not ea.is_master
        assert [await node.get(ea.key) is not None for node in nodes] == [True, True, False]
        # A partition long enough for TCP to give up: the requests held up in
        # it never arrive. Wait until a's client reaches every node again.
        for proxy in px[:2]:
            proxy.reset()
            proxy.forward()
        with trio.fail_after(2):
            while failures(await fan_out(fa.nodes, ping, nursery=fa.nursery)):
                await trio.sleep(0.05)
        await ea._release()
        # Confirmed by a quorum; the last node may answer a moment later.
        with trio.fail_after(1):
            while [await node.get(ea.key) for node in nodes] != [None, None, None]:
                await trio.sleep(0.02)
