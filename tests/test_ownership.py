"""Sharded ownership on the memory mechanism, under the mock clock."""

from __future__ import annotations

import pytest
import trio

from election2 import ConfigurationError, Election, InvalidResourceIdError
from election2.mechanisms.memory import MemoryBackend
from election2.ownership import ShardedOwnership

pytestmark = pytest.mark.autojump_clock
RESOURCES = [f"shard-{i}" for i in range(10)]


async def forever(election: Election) -> None:
    await trio.sleep_forever()


async def test_instances_share_and_take_over() -> None:
    backend = MemoryBackend(ttl=10)
    async with backend.open_factory("a") as fa, backend.open_factory("b") as fb:
        a = ShardedOwnership(fa, RESOURCES, forever, max_owned=5)
        b = ShardedOwnership(fb, RESOURCES, forever, max_owned=5)
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run)
            await nursery.start(b.run)
            await trio.sleep(30)
            assert len(a.owned) == len(b.owned) == 5
            assert a.owned | b.owned == set(RESOURCES)
            nursery.cancel_scope.cancel()


async def test_uncapped_instance_takes_over_after_crash() -> None:
    backend = MemoryBackend(ttl=10)
    async with backend.open_factory("a") as fa, backend.open_factory("b") as fb:
        a = ShardedOwnership(fa, RESOURCES, forever, max_owned=5)
        b = ShardedOwnership(fb, RESOURCES, forever)
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run)
            await trio.sleep(5)
            await nursery.start(b.run)
            await trio.sleep(5)
            assert len(a.owned) == 5 and a.owned.isdisjoint(b.owned)
            backend.crash("a")
            await trio.sleep(10 + 2)
            assert b.owned == set(RESOURCES) and not a.owned
            nursery.cancel_scope.cancel()


async def test_work_returning_resigns_and_campaigns_again() -> None:
    backend = MemoryBackend(ttl=10)
    runs: list[int] = []

    async def one_batch(election: Election) -> None:
        assert election.fencing_token is not None
        runs.append(election.fencing_token)
        await trio.sleep(1)

    async with backend.open_factory("a") as fa:
        owner = ShardedOwnership(fa, ["job"], one_batch)
        with trio.move_on_after(10):
            await owner.run()
    assert len(runs) >= 5
    assert runs == sorted(runs) and len(set(runs)) == len(runs)


async def test_bad_input() -> None:
    backend = MemoryBackend(ttl=10)
    async with backend.open_factory("a") as fa:
        with pytest.raises(InvalidResourceIdError, match="'a/b'"):
            ShardedOwnership(fa, ["ok", "a/b"], forever)
        with pytest.raises(ConfigurationError, match="repeat"):
            ShardedOwnership(fa, ["x", "x"], forever)
        with pytest.raises(ConfigurationError, match="max_owned"):
            ShardedOwnership(fa, ["x"], forever, max_owned=0)
        assert fa.elections == []
