"""The sharded-ownership scene of ``election2 demo``: a fleet shares 12 shards.

alpha, beta and gamma share the shards 4/4/4; delta joins and gets its share
(each holder resigns the shards the plan moved); beta crashes and its shards
are owned again once its lease expires. A table of who owns what is redrawn
in place on a terminal, and printed after each step otherwise.
"""

from __future__ import annotations

import itertools
import math

import trio

from ._election import Election
from .mechanisms.memory import MemoryBackend
from .ownership import ShardedOwnership

SHARDS = [f"shard-{i:02d}" for i in range(12)]


class _Table:
    def __init__(self, owners: dict[str, ShardedOwnership], backend: MemoryBackend, live: bool):
        self.owners = owners
        self.backend = backend
        self.live = live
        self.start = trio.current_time()
        self._drawn = 0

    def lines(self) -> list[str]:
        rows = [f"  t={trio.current_time() - self.start:5.1f}s  instance  owns"]
        for name, owner in self.owners.items():
            state = "crashed" if name in self.backend._crashed else f"{len(owner.owned):>2}"
            shards = " ".join(s[-2:] for s in sorted(owner.owned))
            rows.append(f"           {name:<8}  {state:>7}  {shards}")
        unowned = [s[-2:] for s in SHARDS if self.backend.current_leader(s) is None]
        rows.append(f"           unowned   {len(unowned):>7}  {' '.join(unowned)}")
        return rows

    def new(self) -> None:
        """Start a table below the one drawn."""
        self._drawn = 0
        self.draw()

    def draw(self) -> None:
        rows = self.lines()
        if self.live and self._drawn:
            print(f"\033[{self._drawn}F", end="")  # back to the table's first line
        for row in rows:
            print(f"{row}\033[K" if self.live else row)
        self._drawn = len(rows)

    async def refresh(self) -> None:
        while True:
            self.draw()
            await trio.sleep(0.25)


def _balanced(owners: list[ShardedOwnership]) -> bool:
    owned = [owner.owned for owner in owners]
    return (
        set().union(*owned) == set(SHARDS)
        and sum(map(len, owned)) == len(SHARDS)
        and max(map(len, owned)) <= math.ceil(len(SHARDS) / len(owners))
    )


async def sharding_scene(ttl: float, live: bool) -> None:
    """Run the scene; ``live``: redraw the table in place (a terminal)."""
    backend = MemoryBackend(ttl=ttl)
    owners: dict[str, ShardedOwnership] = {}
    processes: dict[str, trio.CancelScope] = {}

    async def work(election: Election) -> None:
        await trio.sleep_forever()  # serve the shard until mastership ends

    async def instance(name: str, task_status: trio.TaskStatus[None]) -> None:
        with processes.setdefault(name, trio.CancelScope()):  # cancelled = the process died
            async with backend.open_factory(name) as factory:
                owners[name] = ShardedOwnership(factory, SHARDS, work)
                await owners[name].run(task_status=task_status)

    table = _Table(owners, backend, live)

    async def until_balanced(among: list[str]) -> float:
        began = trio.current_time()
        while not _balanced([owners[name] for name in among]):
            await trio.sleep(0.05)
        return trio.current_time() - began

    def step(text: str) -> None:
        if live:
            table.draw()  # the last state of the previous table stays on screen
        print(f"\n{text}")
        table.new()

    async def until_owned(shards: frozenset[str], among: list[str]) -> float:
        began = trio.current_time()
        while not shards <= set().union(*(owners[name].owned for name in among)):
            await trio.sleep(0.05)
        return trio.current_time() - began

    async with trio.open_nursery() as nursery:
        for name in ("alpha", "beta", "gamma"):
            await nursery.start(instance, name)
        took = await until_balanced(["alpha", "beta", "gamma"])
        print(f"\nalpha, beta and gamma share {len(SHARDS)} shards (balanced after {took:.2f}s):")
        table.new()
        if live:
            nursery.start_soon(table.refresh)
        await trio.sleep(ttl)

        await nursery.start(instance, "delta")
        took = await until_balanced(["alpha", "beta", "gamma", "delta"])
        step(
            f"delta joined: holders resigned the shards the plan moved; balanced after {took:.2f}s"
        )
        await trio.sleep(ttl)

        orphans = owners["beta"].owned
        backend.crash("beta")
        processes["beta"].cancel()
        owned_again = await until_owned(orphans, ["alpha", "gamma", "delta"])
        took = owned_again + await until_balanced(["alpha", "gamma", "delta"])
        step(
            f"beta crashed: its shards owned again after {owned_again:.2f}s (TTL {ttl:g}s), "
            f"balanced after {took:.2f}s"
        )
        await trio.sleep(ttl / 2)
        nursery.cancel_scope.cancel()
    table.live = False
    for resource_id in SHARDS:
        terms = sorted((t.start, t.end) for t in backend.history if t.resource_id == resource_id)
        for (_, end), (start, _) in itertools.pairwise(terms):
            assert end is not None and end <= start, resource_id
    print("\nNo shard ever had two masters at once.")
