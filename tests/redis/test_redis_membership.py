"""Redis membership: the members set's layout, crashes, repair, quiet at rest.

Each factory's presence is an entry in the prefix's sorted set
``<prefix>//members`` on every node, refreshed by the renewal script.
"""

from __future__ import annotations

import logging
import signal
import time

import pytest
import trio

import election2
from election2 import (
    ConfigurationError,
    ElectionEvent,
    InvalidResourceIdError,
    MechanismUnavailableError,
)
from election2._checks import check_resource_id
from election2.mechanisms.redis import RedisElection, RedisFactory
from election2.mechanisms.redis._mechanism import check_members_key, members_key_of
from tests.processes import Candidate
from tests.redis.conftest import DirectClient, RedisNodeProcess, direct, url_of

log = logging.getLogger("tests.redis")
TTL = 2.0

#: Commands a renewal script runs inside its EVAL (INFO commandstats counts them too).
RENEWAL_SCRIPT_COMMANDS = {"time", "zremrangebyscore", "zadd", "pexpire", "zrange"}


def redis_factory(factory: election2.Factory) -> RedisFactory:
    assert isinstance(factory, RedisFactory)
    return factory


# -- layout ------------------------------------------------------------------------------

PREFIXES = ["p", "a/b", "election2/prod", "election2/prod/members", "x:members"]
TRICKY_IDS = ["members", ":members", "/members", "//members", "members:fencing", "x" * 256]


def test_the_members_set_is_no_resource_key_of_any_prefix() -> None:
    """Under the default template no lock key or fencing counter of any
    prefix (nested ones included) is a members set: those keys never hold
    '//', since a prefix has no empty segment and a resource id no '/'."""
    members_keys = {members_key_of(prefix) for prefix in PREFIXES}
    assert all("//" in key for key in members_keys)
    for prefix in PREFIXES:
        for resource_id in TRICKY_IDS:
            try:
                check_resource_id(resource_id)
            except InvalidResourceIdError:
                assert "/" in resource_id  # the only ids that could make a '//'
                continue
            key = f"{prefix}/{resource_id}"  # the default template
            assert "//" not in key
            assert not {key, key + ":fencing"} & members_keys


@pytest.mark.parametrize(
    ("template", "clash"),
    [
        ("{prefix}//{resource}", "members"),
        ("{prefix}/{resource}//members", None),
        ("{prefix}{resource}", None),
        ("{prefix}:{resource}", None),
        ("locks:{resource}", None),
        ("{prefix}/{resource}", None),
    ],
)
def test_a_template_that_could_make_the_members_set_is_refused(
    template: str, clash: str | None
) -> None:
    key = members_key_of("p")
    if clash is None:
        check_members_key(template, "p", key)
        return
    with pytest.raises(ConfigurationError, match=repr(clash)):
        check_members_key(template, "p", key)
    assert template.format(prefix="p", resource=clash) == key


async def test_a_clashing_template_is_refused_at_open(
    redis3: list[RedisNodeProcess], prefix: str
) -> None:
    with pytest.raises(ConfigurationError, match="members"):
        async with election2.open_factory(
            url_of(redis3, prefix, TTL, "key_template={prefix}//{resource}")
        ):
            pass


async def test_nested_prefixes_and_tricky_ids_keep_apart(
    redis3: list[RedisNodeProcess], prefix: str
) -> None:
    """Factories on a prefix and on a prefix nested in it, campaigning for ids
    that spell the members set's name, each see only their own members, and
    every key keeps its type (a clash would turn renewals into WRONGTYPE errors)."""
    inner = f"{prefix}/members"
    ids = ["members", ":members", "x:members", "fencing"]
    async with (
        election2.open_factory(url_of(redis3, prefix, TTL), instance_id="outer") as fo,
        election2.open_factory(url_of(redis3, inner, TTL), instance_id="inner") as fi,
        direct(redis3) as nodes,
    ):
        elections = [await f.new_election(r) for f in (fo, fi) for r in ids]
        for election in elections:
            await election.await_mastership()
        await trio.sleep(redis_factory(fo).renew_interval * 2.5)  # two renewals
        assert all(election.is_master for election in elections)
        assert redis_factory(fo).health().healthy and redis_factory(fi).health().healthy
        assert await fo.members() == {"outer"}
        assert await fi.members() == {"inner"}
        for node in nodes:
            for factory in (fo, fi):
                assert await node.type(redis_factory(factory).members_key) == "zset"
            for election in elections:
                assert isinstance(election, RedisElection)
                assert await node.type(election.key) == "string"


# -- liveness ----------------------------------------------------------------------------


async def test_a_killed_member_is_gone_within_a_ttl_and_a_second(
    redis3: list[RedisNodeProcess], prefix: str
) -> None:
    url = url_of(redis3, prefix, TTL)
    async with election2.open_factory(url, instance_id="observer") as factory:
        candidate = Candidate(url, "job", "doomed")
        async with trio.open_nursery() as nursery, factory.observe_members() as changes:
            await nursery.start(candidate.run)
            with trio.fail_after(30):
                async for members in changes:
                    if "doomed" in members:
                        break
            killed_at = time.monotonic()
            candidate.signal(signal.SIGKILL)
            with trio.fail_after(TTL + 1):
                async for members in changes:
                    if "doomed" not in members:
                        break
            gone_after = time.monotonic() - killed_at
            nursery.cancel_scope.cancel()
        assert await factory.members() == {"observer"}
    log.info("a SIGKILLed member left the observed set %.3f s after the kill", gone_after)
    assert gone_after <= TTL + 1


async def test_presence_is_set_again_where_missing(
    own_redis3: list[RedisNodeProcess], prefix: str
) -> None:
    """A node that lost the members set (an operator, a restart) gets every
    live member back at that member's next renewal."""
    async with (
        election2.open_factory(url_of(own_redis3, prefix, TTL), instance_id="a") as fa,
        direct(own_redis3) as nodes,
    ):
        factory = redis_factory(fa)
        await fa.members()
        await nodes[0].delete([factory.members_key])
        own_redis3[1].restart()
        started = trio.current_time()
        with trio.fail_after(factory.renew_interval + 1):
            while not all([await node.zscore(factory.members_key, "a") for node in nodes]):
                await trio.sleep(0.02)
        log.info("presence set again %.3f s later", trio.current_time() - started)
        for node in nodes:  # and it expires with its newest entry
            ttl_ms = await node.pttl(factory.members_key)
            assert 0 < ttl_ms <= TTL * 1000


async def test_joining_needs_a_quorum(own_redis3: list[RedisNodeProcess], prefix: str) -> None:
    async with election2.open_factory(url_of(own_redis3, prefix, TTL), instance_id="a") as fa:
        for node in own_redis3[:2]:
            node.pause()
        try:
            with pytest.raises(MechanismUnavailableError, match="join"):
                await fa.members()
        finally:
            for node in own_redis3[:2]:
                node.resume()
        with trio.fail_after(TTL):  # joins on the next try
            assert await fa.members() == {"a"}


async def test_a_reader_writes_nothing(redis3: list[RedisNodeProcess], prefix: str) -> None:
    async with (
        election2.open_factory(url_of(redis3, prefix, TTL), instance_id="reader") as reader,
        direct(redis3) as nodes,
    ):
        election = await reader.new_election("job")
        assert await election.leader() is None
        await trio.sleep(redis_factory(reader).renew_interval * 1.5)
        for node in nodes:
            assert await node.exists([redis_factory(reader).members_key]) == 0


# -- quiet at rest -----------------------------------------------------------------------


async def commandstats(node: DirectClient) -> dict[str, int]:
    stats = await node.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): int(value["calls"])
        for name, value in stats.items()
        if name.startswith("cmdstat_")
    }


async def test_idle_members_cost_only_their_renewals(
    own_redis3: list[RedisNodeProcess], prefix: str
) -> None:
    """Two joined, idle factories, one of them observing the members: over
    several renewal intervals each node sees nothing but the renewals' EVAL
    calls (and, inside them, the script's own commands), INFO from this
    check, and the pub/sub listeners' keepalive PING (one per
    connection after 15 s without traffic)."""
    url = url_of(own_redis3, prefix, TTL)
    renewals = 0

    def count(event: ElectionEvent) -> None:
        nonlocal renewals
        if event.kind == "renewed":
            renewals += 1

    async with (
        election2.open_factory(url, instance_id="a") as fa,
        election2.open_factory(url, instance_id="b") as fb,
        direct(own_redis3) as nodes,
        fa.observe_members() as changes,
    ):
        interval = redis_factory(fa).renew_interval
        await fb.members()
        with trio.fail_after(TTL):
            async for members in changes:
                if members == {"a", "b"}:
                    break
        for factory in (fa, fb):
            redis_factory(factory).add_listener(count)
        await trio.sleep(interval)  # settled: no join, notice or read on its way
        before = [await commandstats(node) for node in nodes]
        renewals = 0
        seconds = 4 * interval
        await trio.sleep(seconds)
        counted = renewals
        after = [await commandstats(node) for node in nodes]
    allowed = {"eval", "evalsha", "info", "ping"} | RENEWAL_SCRIPT_COMMANDS
    for index, (old, new) in enumerate(zip(before, after, strict=True)):
        grown = {name: new[name] - old.get(name, 0) for name in new if new[name] > old.get(name, 0)}
        log.info(
            "node %d, %d renewals in %.2f s at rest: %s",
            index,
            counted,
            seconds,
            sorted(grown.items()),
        )
        assert set(grown) <= allowed, grown
        scripts = grown.get("eval", 0) + grown.get("evalsha", 0)
        # One call per factory and renewal (one more may be on its way at either end).
        assert counted - 2 <= scripts <= counted + 2, (scripts, counted)
        assert counted >= 2 * (seconds / interval - 1)
        for name in RENEWAL_SCRIPT_COMMANDS:
            assert grown.get(name, 0) == scripts, (name, grown)
        assert grown.get("ping", 0) <= 2  # keepalives of the two listeners
