"""LockTable: mutual exclusion per key, and nothing kept for idle keys."""

from __future__ import annotations

import trio
import trio.testing

from election2._locks import LockTable
from election2.mechanisms.memory import MemoryBackend


async def test_one_holder_per_key_in_arrival_order_and_keys_independent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    table = LockTable()
    order: list[str] = []

    async def hold(key: str, name: str) -> None:
        async with table.hold(key):
            order.append(f"{name}+")
            await trio.sleep(1)
            order.append(f"{name}-")

    async with trio.open_nursery() as nursery:
        for name in ("a1", "a2", "a3"):
            nursery.start_soon(hold, "a", name)
            await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(hold, "b", "b1")
        await trio.testing.wait_all_tasks_blocked()
        assert order == ["a1+", "b1+"]
        assert len(table) == 2
    assert [step for step in order if step[0] == "a"] == ["a1+", "a1-", "a2+", "a2-", "a3+", "a3-"]
    assert len(table) == 0


async def test_a_cancelled_waiter_leaves_nothing_behind(
    autojump_clock: trio.testing.MockClock,
) -> None:
    table = LockTable()

    async def wait_in_vain() -> None:
        with trio.move_on_after(1):
            async with table.hold("k"):
                raise AssertionError("the lock is held")

    async with table.hold("k"):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait_in_vain)
            await trio.testing.wait_all_tasks_blocked()
            assert len(table) == 1
        assert len(table) == 1
    assert len(table) == 0
    async with table.hold("k"):  # still usable
        pass


async def test_idle_and_held_elections_keep_no_locks() -> None:
    backend = MemoryBackend(ttl=10)
    async with backend.open_factory("a") as factory:
        elections = [await factory.new_election(f"r{i}") for i in range(50)]
        for election in elections:
            await election.await_mastership()
        for election in elections[:10]:
            await election.resign()
        assert len(factory._locks) == 0
