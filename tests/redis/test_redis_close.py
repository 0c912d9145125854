"""Closing a Redis factory: a few batched calls per node, whatever it holds."""

from __future__ import annotations

from typing import Any

from election2 import Factory
from election2.mechanisms.redis import RedisFactory
from election2.mechanisms.redis._redlock import LEAVE, RELEASE_MANY
from tests.close_checks import check_close_keeps_to_its_timeout, requests_of_close
from tests.redis.conftest import RedisNodeProcess, direct, url_of

SCRIPTS = {RELEASE_MANY: "RELEASE_MANY", LEAVE: "LEAVE"}


def log_requests(factory: Factory) -> list[str]:
    assert isinstance(factory, RedisFactory)
    made: list[str] = []
    for node in factory.nodes:
        run = node.run

        async def logged(script: str, keys: Any, args: Any, run: Any = run) -> Any:
            made.append(SCRIPTS.get(script, "other"))
            return await run(script, keys, args)

        node.run = logged  # type: ignore[method-assign]
    return made


async def keys_left(nodes: list[RedisNodeProcess], prefix: str) -> list[str]:
    async with direct(nodes) as clients:
        found: list[str] = []
        for client in clients:
            found += [
                k for k in await client.execute("KEYS", f"{prefix}/*") if not k.endswith(":fencing")
            ]
        return found


async def test_close_makes_a_few_calls_per_node_whatever_the_factory_holds(
    redis3: list[RedisNodeProcess], prefix: str
) -> None:
    url = url_of(redis3, prefix, 5.0)
    one = await requests_of_close(url, 1, log_requests)
    many = await requests_of_close(url, 1500, log_requests)
    print(f"calls to close: 1 election {one}, 1500 elections {many}")
    assert sorted(one) == ["LEAVE"] * 3 + ["RELEASE_MANY"] * 3
    assert sorted(many) == ["LEAVE"] * 3 + ["RELEASE_MANY"] * 6  # 1000 keys a call
    assert await keys_left(redis3, prefix) == []


async def test_close_keeps_to_close_timeout_when_the_nodes_stop_answering(
    redis3: list[RedisNodeProcess], prefix: str
) -> None:
    await check_close_keeps_to_its_timeout(
        [node.endpoint for node in redis3],
        lambda endpoints: f"redis://{','.join(endpoints)}/{prefix}?ttl=3&close_timeout=1",
        lambda: keys_left(redis3, prefix),
        expire_within=5,  # the keys expire: nothing is left behind
    )
