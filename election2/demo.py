"""``election2 demo``: three candidates, one resource, the in-memory backend
(then the sharded-ownership scene of :mod:`election2._sharding_demo`).

The story: alpha wins and works; alpha resigns and beta takes over at once
(alpha queues again); beta is cut off from the backend, so its guarded work
stops at its local deadline, and gamma wins only once the backend's lease has
expired; gamma's process crashes and alpha wins one TTL later. Every term gets
a larger fencing token; the backend's record of terms is printed last.
"""

from __future__ import annotations

import logging
import sys

import trio
import trio.testing

from ._sharding_demo import sharding_scene
from .errors import MechanismUnavailableError
from .mechanisms.memory import MemoryBackend, MemoryElection, MemoryFactory

RESOURCE = "nightly-report"
NAMES = ("alpha", "beta", "gamma")
_COLOURS = {"alpha": "\033[36m", "beta": "\033[35m", "gamma": "\033[33m", "demo": "\033[1m"}


class _Log:
    """Timestamped, aligned (and, on a terminal, coloured) lines."""

    def __init__(self, colour: bool) -> None:
        self.colour = colour
        self.start = trio.current_time()

    def elapsed(self, at: float | None = None) -> float:
        return (trio.current_time() if at is None else at) - self.start

    def __call__(self, who: str, text: str) -> None:
        name = f"{who:<8}"
        if self.colour and who in _COLOURS:
            name = f"{_COLOURS[who]}{name}\033[0m"
        print(f"[{self.elapsed():6.2f}s] {name} {text}", flush=True)


class _Instance:
    """One candidate process: a factory plus a campaign/work loop."""

    def __init__(self, backend: MemoryBackend, name: str, log: _Log) -> None:
        self.backend = backend
        self.name = name
        self.log = log
        self.alive = trio.CancelScope()  # cancelling it = the process dies
        self.stopped_work_at: float | None = None
        self.election: MemoryElection | None = None

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with self.alive:
            async with self.backend.open_factory(self.name) as factory:
                task_status.started()
                await self._campaign_forever(factory)

    async def _campaign_forever(self, factory: MemoryFactory) -> None:
        election = self.election = await factory.new_election(RESOURCE)
        while True:
            try:
                await election.await_mastership()
            except MechanismUnavailableError:
                self.log(self.name, "cannot reach the backend; waiting to be healed")
                await trio.sleep(self.backend.ttl)
                continue
            token = election.fencing_token
            self.log(self.name, f"* master now, fencing token {token}")
            async with election.with_mastership() as scope:
                batch = 0
                while True:
                    batch += 1
                    self.log(self.name, f"  works on batch {batch} (token {token})")
                    await trio.sleep(self.backend.ttl / 3)
            self.stopped_work_at = trio.current_time()
            if scope.cancelled_caught:
                self.log(self.name, "  mastership ended: guarded work cancelled")


async def _wait_for_leader(backend: MemoryBackend, other_than: str | None) -> str:
    while (leader := backend.current_leader(RESOURCE)) in (None, other_than):
        await trio.sleep(0.001)
    return leader


async def _observe(backend: MemoryBackend, log: _Log) -> None:
    async with backend.open_factory("observer") as factory:
        election = await factory.new_election(RESOURCE)
        async with election.observe() as changes:
            async for leader in changes:
                log("observer", f"leader: {leader or '(none)'}")


async def _demo(ttl: float, colour: bool) -> None:
    backend = MemoryBackend(ttl=ttl)
    log = _Log(colour)
    log("demo", f"3 candidates for {RESOURCE!r}; lease TTL {ttl:g}s; in-memory backend")
    instances = {name: _Instance(backend, name, log) for name in NAMES}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_observe, backend, log)
        for instance in instances.values():
            await nursery.start(instance.run)
        await trio.sleep(ttl)

        log("demo", "alpha resigns; it campaigns again and queues behind the others")
        resigned_at = trio.current_time()
        alpha = await _resign_current(backend, instances)
        beta = await _wait_for_leader(backend, alpha)
        log(
            "demo",
            f"handover {alpha} -> {beta} took "
            f"{(trio.current_time() - resigned_at) * 1000:.1f} ms: no TTL wait",
        )
        await trio.sleep(ttl)

        log("demo", f"{beta} is cut off from the backend (partition)")
        cut_at = trio.current_time()
        backend.partition(beta)
        gamma = await _wait_for_leader(backend, beta)
        won_at = trio.current_time()
        stopped_at = instances[beta].stopped_work_at
        assert stopped_at is not None and stopped_at < won_at
        log(
            "demo",
            f"{beta} stopped work {stopped_at - cut_at:.2f}s after the cut, "
            f"{(won_at - stopped_at) * 1000:.0f} ms before {gamma} won: never two masters",
        )
        backend.heal(beta)
        await trio.sleep(ttl)

        log("demo", f"{gamma}'s process crashes")
        crashed_at = trio.current_time()
        backend.crash(gamma)
        instances[gamma].alive.cancel()
        successor = await _wait_for_leader(backend, gamma)
        log(
            "demo",
            f"failover {gamma} -> {successor} after "
            f"{trio.current_time() - crashed_at:.2f}s (TTL {ttl:g}s)",
        )
        await trio.sleep(ttl / 2)
        nursery.cancel_scope.cancel()

    print("\nTerms recorded by the backend:")
    print(f"  {'token':>5}  {'instance':<8}  {'start':>8}  {'end':>8}")
    for term in backend.history:
        end = "held" if term.end is None else f"{log.elapsed(term.end):7.2f}s"
        print(
            f"  {term.token:>5}  {term.instance_id:<8}  {log.elapsed(term.start):7.2f}s  {end:>8}"
        )
    tokens = [term.token for term in backend.history]
    ends = [term.end for term in backend.history[:-1]]
    starts = [term.start for term in backend.history[1:]]
    assert tokens == sorted(set(tokens))
    assert all(end is not None and end <= start for end, start in zip(ends, starts, strict=True))
    print("\nFencing tokens strictly increased and no two terms overlapped.")


async def _resign_current(backend: MemoryBackend, instances: dict[str, _Instance]) -> str:
    leader = await _wait_for_leader(backend, None)
    election = instances[leader].election
    assert election is not None
    await election.resign()
    return leader


SCENES = ("election", "sharding")


def run_demo(
    *, ttl: float = 2.0, virtual_time: bool = False, scenes: tuple[str, ...] = SCENES
) -> int:
    """Run the demo's ``scenes``; returns the process exit status."""
    logging.getLogger("election2").setLevel(logging.CRITICAL)  # the faults are staged
    clock = trio.testing.MockClock(autojump_threshold=0) if virtual_time else None
    terminal = sys.stdout.isatty()
    if "election" in scenes:
        trio.run(_demo, ttl, terminal, clock=clock)
    if "sharding" in scenes:
        print("\n\nSharded ownership: a fleet shares 12 shards by itself\n")
        trio.run(sharding_scene, ttl, terminal and not virtual_time, clock=clock)
    return 0
