"""Helpers shared by the benchmark scripts: timing, tables, idle cost."""

from __future__ import annotations

import importlib
import itertools
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import (
    AbstractAsyncContextManager,
    AbstractContextManager,
    AsyncExitStack,
    asynccontextmanager,
    contextmanager,
)
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import trio

import election2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # for tests.servers: the same server fixtures as the tests

from tests.servers import ServerProcess, free_port, wait_until  # noqa: E402


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


@asynccontextmanager
async def election2_handover(url: str) -> AsyncIterator[Batch[float]]:
    """Two instances take turns: one resigns while the other waits; each
    sample runs from the start of ``resign()`` to the waiter's win. Yields a
    batch function, so rounds can be interleaved with other contenders."""
    async with election2.open_factory(url, instance_id="a") as fa:
        async with election2.open_factory(url, instance_id="b") as fb:
            elections = [await fa.new_election("job"), await fb.new_election("job")]
            await elections[0].await_mastership()
            turn = 0

            async def batch(count: int) -> list[float]:
                nonlocal turn
                samples = []
                for _ in range(count):
                    holder, waiter = elections[turn % 2], elections[(turn + 1) % 2]
                    turn += 1
                    won = trio.Event()

                    async def campaign(waiter: Any = waiter, won: trio.Event = won) -> None:
                        await waiter.await_mastership()
                        won.set()

                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(campaign)
                        await trio.sleep(QUEUED)  # the waiter is queued
                        started = time.perf_counter()
                        await holder.resign()
                        await won.wait()
                        samples.append(time.perf_counter() - started)
                return samples

            yield batch


async def handover_samples(url: str, rounds: int) -> list[float]:
    """``rounds`` handovers between two election2 instances (see above)."""
    async with election2_handover(url) as batch:
        return await batch(rounds)


@contextmanager
def etcdctl_handover(endpoint: str) -> Iterator[SyncBatch[float]]:
    """Two ``etcdctl elect`` processes (Go client); the holder is interrupted,
    which makes it resign. A sample runs from the interrupt to the waiter's
    printed win; the waiter's process start-up is excluded."""
    from tests.servers import require_binary

    etcdctl = require_binary("etcdctl")
    env = {**os.environ, "ETCDCTL_API": "3"}
    name = f"bench-ctl-{uuid.uuid4().hex[:8]}"
    proposals = itertools.count()

    def elect() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [etcdctl, f"--endpoints={endpoint}", "elect", name, f"p{next(proposals)}"],
            stdout=subprocess.PIPE,
            env=env,
        )

    holder = elect()
    assert holder.stdout is not None
    holder.stdout.readline()

    def batch(count: int) -> list[float]:
        nonlocal holder
        samples = []
        for _ in range(count):
            waiter = elect()
            time.sleep(0.3)  # the waiter is queued (process start-up excluded)
            assert waiter.stdout is not None
            started = time.perf_counter()
            holder.send_signal(signal.SIGINT)
            waiter.stdout.readline()
            samples.append(time.perf_counter() - started)
            holder.wait(5)
            holder = waiter
        return samples

    try:
        yield batch
    finally:
        holder.kill()
        holder.wait(5)


# -- peers, interleaved rounds, "not measured" -------------------------------

QUEUED = 0.05  # how long a handover's waiter is given to queue before the release

T = TypeVar("T")
Batch = Callable[[int], Awaitable[list[T]]]
SyncBatch = Callable[[int], list[T]]
Opener = Callable[[], AbstractAsyncContextManager[Batch[T]]]


class NotMeasured(Exception):
    """A contender that cannot run here: why, and the command that fixes it."""

    def __init__(self, why: str, install: str | None = None) -> None:
        super().__init__(f"{why} (install: {install})" if install else why)


def need(module: str, install: str) -> Any:
    """Import a peer library or raise :class:`NotMeasured` naming its install."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise NotMeasured(f"{module} cannot be imported ({error})", install) from None


def report_not_measured(missing: Mapping[str, str]) -> None:
    """Print every contender that did not run, loudly, under the last table."""
    if missing:
        print()
    for name, why in missing.items():
        line = f"not measured: {name}: {why}"
        print(f"- **{line}**")
        print(f"!!! {line}", file=sys.stderr)
    sys.stdout.flush()


def rounds(default: int) -> int:
    """Interleaved rounds for the peer comparisons (ELECTION2_BENCH_ROUNDS)."""
    return int(os.environ.get("ELECTION2_BENCH_ROUNDS", str(default)))


@asynccontextmanager
async def in_thread(
    opener: Callable[[], AbstractContextManager[SyncBatch[T]]],
) -> AsyncIterator[Batch[T]]:
    """A blocking client's contender: set up, measured and closed in worker
    threads, so trio's loop (and election2's background tasks) keeps running."""
    manager = opener()
    batch = await trio.to_thread.run_sync(manager.__enter__)
    try:

        async def threaded_batch(count: int) -> list[T]:
            return await trio.to_thread.run_sync(batch, count)

        yield threaded_batch
    finally:
        await trio.to_thread.run_sync(manager.__exit__, None, None, None)


Pair = tuple[float, float]  # (acquire, acquire + release) of one sample


def timed_pairs(
    acquire: Callable[[], object], release: Callable[[], object], count: int
) -> list[Pair]:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        acquire()
        acquired = time.perf_counter()
        release()
        samples.append((acquired - started, time.perf_counter() - started))
    return samples


async def async_timed_pairs(
    acquire: Callable[[], Awaitable[object]], release: Callable[[], Awaitable[object]], count: int
) -> list[Pair]:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        await acquire()
        acquired = time.perf_counter()
        await release()
        samples.append((acquired - started, time.perf_counter() - started))
    return samples


async def interleaved(
    openers: Mapping[str, Opener[T]], round_count: int, per_round: int
) -> tuple[dict[str, list[T]], dict[str, str]]:
    """Open every contender, then run ``round_count`` rounds of ``per_round``
    samples each, alternating between contenders (the order reversed every
    other round) so machine noise hits all of them alike. Returns the samples
    of the contenders that ran and why the others did not."""
    samples: dict[str, list[T]] = {}
    missing: dict[str, str] = {}
    batches: dict[str, Batch[T]] = {}
    async with AsyncExitStack() as stack:
        for name, opener in openers.items():
            try:
                batches[name] = await stack.enter_async_context(opener())
                samples[name] = []
            except NotMeasured as why:
                missing[name] = str(why)
            except Exception as error:  # a peer that fails here is reported, not hidden
                missing[name] = f"failed to start: {type(error).__name__}: {error}"
        for round_number in range(round_count):
            order = list(batches)
            for name in order if round_number % 2 == 0 else reversed(order):
                try:
                    samples[name] += await batches[name](per_round)
                except Exception as error:
                    missing[name] = (
                        f"failed in round {round_number}: {type(error).__name__}: {error}"
                    )
                    del batches[name], samples[name]
    return samples, missing


def ratio_row(
    name: str,
    samples: Sequence[float],
    reference: str | None,
    of: Mapping[str, Sequence[float]],
    label: str = "",
) -> list[str]:
    """A latency row against ``of[reference]``; ``label`` names the
    reference in the ratio cell, for tables with more than one."""
    p50, p99 = percentile(samples, 0.5), percentile(samples, 0.99)
    if reference is None or reference == name:
        ratio = "1.00x (reference)"
    elif reference in of:
        ratio = f"{p50 / percentile(of[reference], 0.5):.2f}x {label}".rstrip()
    else:
        ratio = f"n/a ({reference} not measured)"
    return [name, str(len(samples)), ms(p50), ms(p99), ms(statistics.fmean(samples)), ratio]


RATIO_HEADER = ["what", "n", "p50", "p99", "mean", "p50 vs reference"]


def rss_bytes() -> int:
    """This process's resident set size (Linux /proc)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


class ZooKeeperServer(ServerProcess):
    """A standalone ZooKeeper from Debian's ``zookeeper`` package on a free
    loopback port, with a temporary data dir and the admin server disabled.
    Defaults otherwise (its transaction log is synced, like etcd's WAL)."""

    JAR = "/usr/share/java/zookeeper.jar"  # its manifest's Class-Path names the rest
    INSTALL = "apt-get install -y zookeeper"

    def __init__(self, data_dir: Path) -> None:
        java = shutil.which("java")
        if not os.path.exists(self.JAR) or java is None:
            raise NotMeasured(f"ZooKeeper server not found ({self.JAR}, java)", self.INSTALL)
        data_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        config = data_dir / "zoo.cfg"
        config.write_text(
            "tickTime=2000\n"
            f"dataDir={data_dir / 'data'}\n"
            f"clientPort={self.port}\n"
            "clientPortAddress=127.0.0.1\n"
            "maxClientCnxns=0\n"
            "admin.enableServer=false\n"
            "4lw.commands.whitelist=srvr\n"
        )
        super().__init__(
            [
                java,
                "-Xmx1g",
                "-cp",
                self.JAR,
                "org.apache.zookeeper.server.ZooKeeperServerMain",
                str(config),
            ],
            name=f"zookeeper-{self.port}",
            log_path=data_dir / "zookeeper.log",
        )

    @property
    def hosts(self) -> str:
        return f"127.0.0.1:{self.port}"

    def four_letters(self, word: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
            sock.sendall(word)
            answer = b""
            while chunk := sock.recv(4096):  # the server closes after its answer
                answer += chunk
            return answer

    def answers(self) -> bool:
        try:
            return b"Mode: standalone" in self.four_letters(b"srvr")  # serving, not only up
        except OSError:
            return False

    def version(self) -> str:
        first = self.four_letters(b"srvr").decode(errors="replace").splitlines()[0]
        return first.split(":", 1)[1].split("-")[0].strip()

    def start(self) -> None:
        super().start()
        try:
            wait_until(self.answers, timeout=30, what=self.name)
        except TimeoutError:
            raise TimeoutError(f"ZooKeeper did not start:\n{self.log_tail()}") from None
