"""Redis (Redlock) benchmarks: acquire+release, handover, pottery, 10k resources.

Starts its own redis-server processes on free loopback ports. Run:
``python bench/bench_redis.py`` (``ELECTION2_BENCH_RESOURCES=1000`` for a
quicker run). The reference is redis-py's sync client (a bench-only
dependency); pottery (a peer Redlock library) is measured if installed.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
import uuid
from pathlib import Path

import _common
import trio
from redis import Redis  # type: ignore[import-not-found,unused-ignore]

import election2
from election2.mechanisms.redis import RedisFactory
from tests.redis.conftest import RedisNodeProcess, start_nodes

TTL = 2.0
ROUNDS = 200
HANDOVERS = 40


def url_of(nodes: list[RedisNodeProcess], ttl: float = TTL) -> str:
    hosts = ",".join(node.endpoint for node in nodes)
    return f"redis://{hosts}/bench{uuid.uuid4().hex[:8]}?ttl={ttl:g}"


def single_node_set_del(node: RedisNodeProcess, rounds: int) -> list[float]:
    """The reference: one node, SET NX PX + DEL with redis-py's sync client
    (blocking this thread: nothing else runs meanwhile), no quorum, no scripts."""
    samples = []
    client = Redis(host="127.0.0.1", port=node.port, decode_responses=True)
    client.ping()
    for i in range(rounds):
        started = time.perf_counter()
        assert client.set(f"ref{i}", "v", nx=True, px=2000)
        client.delete(f"ref{i}")
        samples.append(time.perf_counter() - started)
    client.close()
    return samples


async def our_acquire_release(nodes: list[RedisNodeProcess], rounds: int) -> list[float]:
    samples = []
    async with election2.open_factory(url_of(nodes), instance_id="a") as factory:
        election = await factory.new_election("job")
        await election.await_mastership()  # warm the connections
        await election.resign()
        for _ in range(rounds):
            started = time.perf_counter()
            await election.await_mastership()
            await election.resign()
            samples.append(time.perf_counter() - started)
    return samples


def pottery_runs(nodes: list[RedisNodeProcess]) -> tuple[list[float], list[float]] | None:
    try:
        from pottery import Redlock  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    masters = {Redis(host="127.0.0.1", port=node.port) for node in nodes}
    key = f"pottery{uuid.uuid4().hex[:8]}"
    lock = Redlock(key=key, masters=masters, auto_release_time=TTL)
    lock.acquire()
    lock.release()
    acquire_release = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        lock.acquire()
        lock.release()
        acquire_release.append(time.perf_counter() - started)
    handover = []
    holder, waiter = lock, Redlock(key=key, masters=masters, auto_release_time=TTL)
    holder.acquire()
    for _ in range(HANDOVERS):
        won = threading.Event()

        def campaign(waiter: Redlock = waiter, won: threading.Event = won) -> None:
            waiter.acquire(blocking=True, timeout=10)
            won.set()

        thread = threading.Thread(target=campaign)
        thread.start()
        time.sleep(0.02)
        started = time.perf_counter()
        holder.release()
        won.wait(10)
        handover.append(time.perf_counter() - started)
        thread.join()
        holder, waiter = waiter, holder
    holder.release()
    return acquire_release, handover


async def many_resources(nodes: list[RedisNodeProcess], count: int) -> list[list[str]]:
    rows = []
    for n in sorted({100, count}):
        async with election2.open_factory(url_of(nodes, ttl=10), instance_id="owner") as factory:
            assert isinstance(factory, RedisFactory)
            calls = _common.CallCounter()
            for node in factory.nodes:
                node.run = calls.wrap(node.run)  # type: ignore[method-assign,assignment]
            result = await _common.many_resources(factory, n, calls)
            rows.append(
                [
                    str(n),
                    f"{result.acquire_all:.2f} s",
                    f"{result.calls_per_second * factory.renew_interval:.1f}",
                    f"{result.bytes_per_election / 1024:.1f} KiB",
                    f"{result.idle_cpu * 100:.2f} %",
                ]
            )
    return rows


async def run(nodes: list[RedisNodeProcess]) -> None:
    print(f"# Redis benchmarks (3 masters on loopback, ttl {TTL:g} s, {os.cpu_count()} cores)")
    reference = single_node_set_del(nodes[0], ROUNDS)
    ours_1 = await our_acquire_release(nodes[:1], ROUNDS)
    ours = await our_acquire_release(nodes, ROUNDS)
    handover = await _common.handover_samples(url_of(nodes), HANDOVERS)
    peer = await trio.to_thread.run_sync(pottery_runs, nodes)
    rows = [
        _common.latency_row("single node SET NX PX + DEL (redis-py sync)", reference, None),
        _common.latency_row("election2 acquire + release, 1 node", ours_1, reference),
        _common.latency_row("election2 acquire + release, 3 nodes", ours, reference),
    ]
    if peer is not None:
        rows.append(
            _common.latency_row("pottery Redlock acquire + release, 3 nodes", peer[0], reference)
        )
    _common.table("Acquire + release", _common.LATENCY_HEADER, rows)
    handover_rows = [_common.latency_row("election2 handover after resign()", handover, None)]
    if peer is not None:
        handover_rows.append(
            _common.latency_row("pottery handover after release()", peer[1], handover)
        )
    _common.table("Handover (reference: election2)", _common.LATENCY_HEADER, handover_rows)
    _common.table(
        "One factory, many resources (ttl 10 s; idle measured over 10 s)",
        [
            "resources",
            "acquire all",
            "script calls per renewal tick",
            "memory / election",
            "idle CPU",
        ],
        await many_resources(nodes, _common.scale()),
    )


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        nodes = start_nodes(Path(tmp), 3)
        try:
            await run(nodes)
        finally:
            for node in nodes:
                node.kill()


if __name__ == "__main__":
    trio.run(main)
