"""Checks of closing a factory that holds many elections, for every networked
mechanism: the requests do not grow with the elections, and an unreachable
backend cannot hold the close up past ``close_timeout``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import trio

import election2
from election2 import Election, Factory
from tests.faultproxy import proxies

#: Records the requests a factory makes from now on (their names, in order).
RequestLog = Callable[[Factory], list[str]]


async def hold(factory: Factory, count: int) -> list[Election]:
    """Win ``count`` resources, 20 campaigns at a time."""
    elections = [await factory.new_election(f"res{i}") for i in range(count)]
    for start in range(0, count, 20):
        async with trio.open_nursery() as nursery:
            for election in elections[start : start + 20]:
                nursery.start_soon(election.await_mastership)
    return elections


async def requests_of_close(url: str, count: int, log_requests: RequestLog) -> list[str]:
    """The requests a factory holding ``count`` elections makes to close."""
    async with election2.open_factory(url, instance_id="closing") as factory:
        await hold(factory, count)
        made = log_requests(factory)
    return made


async def close_while_unreachable(
    servers: Sequence[str], url_of: Callable[[list[str]], str], count: int
) -> float:
    """Seconds a factory holding ``count`` elections takes to close once every
    server stops answering it (``url_of`` must set ``close_timeout``)."""
    async with proxies(servers) as own:
        url = url_of([proxy.endpoint for proxy in own])
        async with election2.open_factory(url, instance_id="closing") as factory:
            await hold(factory, count)
            for proxy in own:
                proxy.blackhole()
            started = trio.current_time()
        return trio.current_time() - started


async def check_close_keeps_to_its_timeout(
    servers: Sequence[str],
    url_of: Callable[[list[str]], str],
    records_left: Callable[[], Awaitable[list[str]]],
    expire_within: float,
) -> None:
    """Closing 50 elections with every server silent takes ``close_timeout``
    (``url_of`` sets 1 s), not 50 of them; what it could not release is gone
    within ``expire_within`` seconds (the lease or keys expire)."""
    took = await close_while_unreachable(servers, url_of, 50)
    print(f"close of 50 elections, servers silent, close_timeout 1 s: {took:.2f} s")
    assert took < 1.5
    with trio.fail_after(expire_within):
        while await records_left():
            await trio.sleep(0.2)
