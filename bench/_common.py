"""Helpers shared by the benchmark scripts: timing, tables, idle cost."""

from __future__ import annotations

import os
import resource
import statistics
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

import election2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # for tests.servers: the same server fixtures as the tests


def percentile(samples: Sequence[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")
    sys.stdout.flush()


def latency_row(
    name: str, samples: Sequence[float], reference: Sequence[float] | None
) -> list[str]:
    p50, p99 = percentile(samples, 0.5), percentile(samples, 0.99)
    ratio = f"{p50 / percentile(reference, 0.5):.2f}x" if reference else "1.00x (reference)"
    return [name, str(len(samples)), ms(p50), ms(p99), ms(statistics.fmean(samples)), ratio]


LATENCY_HEADER = ["what", "n", "p50", "p99", "mean", "p50 vs reference"]


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def idle_cost(seconds: float, count_calls: Callable[[], int]) -> tuple[float, float]:
    """CPU share of one core and backend calls per second while idle."""
    cpu_before, calls_before, started = cpu_seconds(), count_calls(), time.monotonic()
    await trio.sleep(seconds)
    elapsed = time.monotonic() - started
    return (cpu_seconds() - cpu_before) / elapsed, (count_calls() - calls_before) / elapsed


async def memory_per_item(count: int, make: Callable[[int], Awaitable[object]]) -> float:
    """Bytes allocated per item by ``make``, measured with tracemalloc."""
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    keep = [await make(i) for i in range(count)]
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    del keep
    return grown / count


def scale() -> int:
    """Resources for the many-resources runs (ELECTION2_BENCH_RESOURCES)."""
    return int(os.environ.get("ELECTION2_BENCH_RESOURCES", "10000"))


class CallCounter:
    """Counts the calls of the async functions it wraps."""

    def __init__(self) -> None:
        self.count = 0

    def wrap(self, function: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return await function(*args, **kwargs)

        return counted


@dataclass
class ManyResources:
    resources: int
    acquire_all: float
    bytes_per_election: float
    idle_cpu: float
    calls_per_second: float


async def many_resources(factory: Any, count: int, calls: CallCounter) -> ManyResources:
    """Create ``count`` elections on one factory, win them all (64 campaigns at
    a time), then sit idle for 10 s measuring CPU and backend calls."""
    per_election = await memory_per_item(count, lambda i: factory.new_election(f"r{i}"))
    limit = trio.CapacityLimiter(64)

    async def acquire(election: Any) -> None:
        async with limit:
            await election.await_mastership()

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for election in factory.elections:
            nursery.start_soon(acquire, election)
    acquired = time.perf_counter() - started
    assert all(e.is_master for e in factory.elections)
    cpu, per_second = await idle_cost(10, lambda: calls.count)
    return ManyResources(count, acquired, per_election, cpu, per_second)


async def handover_samples(url: str, rounds: int) -> list[float]:
    """Two instances take turns: one resigns while the other waits; each
    sample runs from the start of ``resign()`` to the waiter's win."""
    samples = []
    async with election2.open_factory(url, instance_id="a") as fa:
        async with election2.open_factory(url, instance_id="b") as fb:
            elections = [await fa.new_election("job"), await fb.new_election("job")]
            await elections[0].await_mastership()
            for round_number in range(rounds):
                holder, waiter = elections[round_number % 2], elections[(round_number + 1) % 2]
                won = trio.Event()

                async def campaign(waiter: Any = waiter, won: trio.Event = won) -> None:
                    await waiter.await_mastership()
                    won.set()

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(campaign)
                    await trio.sleep(0.05)  # the waiter is queued
                    started = time.perf_counter()
                    await holder.resign()
                    await won.wait()
                    samples.append(time.perf_counter() - started)
    return samples
