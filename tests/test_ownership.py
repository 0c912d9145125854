"""Balanced sharded ownership on the memory mechanism, under the mock clock."""

from __future__ import annotations

import itertools
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from election2 import ConfigurationError, Election, InvalidResourceIdError
from election2.mechanisms.memory import MemoryBackend
from election2.ownership import OwnershipEvent, ShardedOwnership, plan

pytestmark = pytest.mark.autojump_clock
TTL = 10.0
RESOURCES = [f"shard-{i}" for i in range(50)]


async def forever(election: Election) -> None:
    await trio.sleep_forever()


def test_plan_is_balanced_deterministic_and_sticky() -> None:
    members = [f"m{i}" for i in range(5)]
    owners = plan(members, RESOURCES)
    assert set(owners) == set(RESOURCES)
    assert max(list(owners.values()).count(m) for m in members) == 10
    assert plan(reversed(members), reversed(RESOURCES)) == owners
    joined = plan([*members, "m5"], RESOURCES)
    moved = sum(owners[r] != joined[r] for r in RESOURCES)
    assert moved <= 2 * math.ceil(len(RESOURCES) / 6), moved  # about R/N, not all
    left = plan(members[1:], RESOURCES)
    moved = sum(owners[r] != left[r] for r in RESOURCES if owners[r] != "m0")
    assert moved <= len(RESOURCES) // 5, moved


class Fleet:
    """Instances of one ownership, each with its factory on one backend."""

    def __init__(self, backend: MemoryBackend, nursery: trio.Nursery) -> None:
        self.backend = backend
        self.nursery = nursery
        self.owners: dict[str, ShardedOwnership] = {}

    async def start(self, instance_id: str, resources: list[str] = RESOURCES) -> ShardedOwnership:
        async def instance(task_status: trio.TaskStatus[None]) -> None:
            async with self.backend.open_factory(instance_id) as factory:
                owner = self.owners[instance_id] = ShardedOwnership(factory, resources, forever)
                await owner.run(task_status=task_status)

        await self.nursery.start(instance)
        return self.owners[instance_id]

    def live(self) -> list[ShardedOwnership]:
        return [o for i, o in self.owners.items() if i not in self.backend._crashed]

    def check_balanced(self, resources: list[str] = RESOURCES) -> None:
        owners = self.live()
        owned = [o.owned for o in owners]
        assert set().union(*owned) == set(resources), "all owned"
        assert sum(len(o) for o in owned) == len(resources), "each by one instance"
        bound = math.ceil(len(resources) / len(owners)) + 1
        assert max(len(o) for o in owned) <= bound, [len(o) for o in owned]


@asynccontextmanager
async def fleet(backend: MemoryBackend) -> AsyncIterator[Fleet]:
    async with trio.open_nursery() as nursery:
        yield Fleet(backend, nursery)
        nursery.cancel_scope.cancel()


def never_two_terms_at_once(backend: MemoryBackend) -> None:
    by_resource: dict[str, list[tuple[float, float]]] = {}
    for term in backend.history:
        end = term.end if term.end is not None else math.inf
        by_resource.setdefault(term.resource_id, []).append((term.start, end))
    for terms in by_resource.values():
        terms.sort()
        for (_, end), (start, _) in itertools.pairwise(terms):
            assert end <= start


async def test_two_instances_split_evenly() -> None:
    backend = MemoryBackend(ttl=TTL)
    async with fleet(backend) as f:
        a = await f.start("a", RESOURCES[:8])
        b = await f.start("b", RESOURCES[:8])
        await trio.sleep(TTL)
        assert len(a.owned) == len(b.owned) == 4
        f.check_balanced(RESOURCES[:8])


async def test_five_instances_converge_after_joins_and_a_crash() -> None:
    backend = MemoryBackend(ttl=TTL)
    async with fleet(backend) as f:
        for name in "abcd":
            await f.start(name)
        await trio.sleep(TTL)
        f.check_balanced()
        terms_before_join = len(backend.history)
        await f.start("e")  # a join moves about R/N resources to it
        await trio.sleep(TTL)
        f.check_balanced()
        assert len(f.owners["e"].owned) >= 9
        assert len(backend.history) - terms_before_join <= 2 * math.ceil(50 / 5)
        backend.crash("c")
        crashed_at = trio.current_time()
        lost = f.owners["c"].owned
        while not lost <= set().union(*(o.owned for o in f.live())):
            await trio.sleep(0.1)
        took = trio.current_time() - crashed_at
        assert took <= TTL + 1 + 1.0, took  # ttl + 1 s + the hand-off delay
        await trio.sleep(TTL)
        f.check_balanced()
    never_two_terms_at_once(backend)


async def test_quiet_at_rest() -> None:
    backend = MemoryBackend(ttl=TTL)
    async with fleet(backend) as f:
        for name in "abc":
            await f.start(name, RESOURCES[:30])
        await trio.sleep(TTL * 2)
        terms, queued = (
            len(backend.history),
            sum(len(backend.candidates(r)) for r in RESOURCES[:30]),
        )
        await trio.sleep(TTL * 10)
        assert len(backend.history) == terms  # no churn
        assert queued == 30  # nobody waits behind a holder: no campaign at rest
        f.check_balanced(RESOURCES[:30])


async def test_failing_work_resigns_only_its_resource_and_retries() -> None:
    backend = MemoryBackend(ttl=TTL)
    calls: list[float] = []

    async def flaky(election: Election) -> None:
        if election.resource_id == "bad" and len(calls) < 3:
            calls.append(trio.current_time())
            raise RuntimeError("boom")
        await trio.sleep_forever()

    async with backend.open_factory("a") as fa:
        owner = ShardedOwnership(fa, ["good", "bad"], flaky)
        events: list[OwnershipEvent] = []
        async with trio.open_nursery() as nursery, owner.events() as stream:

            async def collect() -> None:
                async for event in stream:
                    events.append(event)

            nursery.start_soon(collect)
            await nursery.start(owner.run)
            await trio.sleep(30)
            assert owner.owned == {"good", "bad"}
            nursery.cancel_scope.cancel()
    failed = [e for e in events if e.kind == "failed"]
    assert len(failed) == 3 and all("boom" in (e.reason or "") for e in failed)
    assert [round(b - a) for a, b in itertools.pairwise(calls)] == [1, 2]  # backoff
    good = [e for e in events if e.resource_id == "good"]
    assert [e.kind for e in good] == ["acquired"]  # untouched


async def test_add_and_remove_at_run_time_and_events_match_owned() -> None:
    backend = MemoryBackend(ttl=TTL)
    async with backend.open_factory("a") as fa:
        owner = ShardedOwnership(fa, ["x"], forever)
        async with owner.events() as stream:
            async with trio.open_nursery() as nursery:
                await nursery.start(owner.run)
                await trio.sleep(1)
                owner.add("y")
                await trio.sleep(1)
                assert owner.owned == {"x", "y"}
                owner.remove("x")
                await trio.sleep(1)
                assert owner.owned == {"y"} and backend.current_leader("x") is None
                nursery.cancel_scope.cancel()  # the ownership stops
            events = []
            while True:
                try:
                    events.append(stream.receive_nowait())
                except trio.WouldBlock:
                    break
    kinds = [(e.kind, e.resource_id, e.reason) for e in events]
    assert kinds == [
        ("acquired", "x", None),
        ("acquired", "y", None),
        ("resigned", "x", "removed"),
        ("resigned", "y", "stopped"),
    ]
    assert backend.current_leader("y") is None  # stopping resigned everything


async def test_bad_input() -> None:
    backend = MemoryBackend(ttl=10)
    async with backend.open_factory("a") as fa:
        with pytest.raises(InvalidResourceIdError, match="'a/b'"):
            ShardedOwnership(fa, ["ok", "a/b"], forever)
        with pytest.raises(ConfigurationError, match="repeat"):
            ShardedOwnership(fa, ["x", "x"], forever)
        with pytest.raises(ConfigurationError, match="handoff_delay"):
            ShardedOwnership(fa, ["x"], forever, handoff_delay=0)
        assert fa.elections == []


async def test_a_partitioned_instance_hands_over_and_rejoins() -> None:
    backend = MemoryBackend(ttl=TTL)
    events: list[OwnershipEvent] = []
    async with fleet(backend) as f:
        for name in "abc":
            await f.start(name, RESOURCES[:30])
        await trio.sleep(TTL)
        f.check_balanced(RESOURCES[:30])
        cut = f.owners["c"]
        before = set(cut.owned)
        async with cut.events() as stream:
            backend.partition("c")  # c's terms end at its local deadline
            await trio.sleep(TTL * 2)
            assert not cut.owned
            survivors = [f.owners["a"], f.owners["b"]]
            assert set().union(*(o.owned for o in survivors)) == set(RESOURCES[:30])
            backend.heal("c")  # c is a member again and gets its share back
            await trio.sleep(TTL * 2)
            f.check_balanced(RESOURCES[:30])
            after = set(cut.owned)
            while True:
                try:
                    events.append(stream.receive_nowait())
                except trio.WouldBlock:
                    break
    never_two_terms_at_once(backend)
    # c's events match what it owned: its terms ended as lost, then it got its
    # share back (and still holds exactly that).
    lost = events[: len(before)]
    assert all(e.kind == "lost" for e in lost) and {e.resource_id for e in lost} == before
    assert [e.kind for e in events[len(before) :]] == ["acquired"] * len(after)
    assert {e.resource_id for e in events[len(before) :]} == after
