"""Redis client costs under trio: coredis vs redis-py (sync) vs our RESP client.

One loopback redis-server (started here). Per-call latency and client CPU of
one sequential ``SET`` and one script call (``EVALSHA``; coredis as the
mechanism configured it used ``EVAL``), then 10,000 concurrent ``SET``s
(pipelined on one connection vs coredis' pool vs a redis-py pipeline). Run:
``python bench/bench_resp.py`` (``ELECTION2_BENCH_CALLS`` sequential calls,
default 3000). redis-py and coredis are bench-only: rows are skipped when
missing.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import _common
import trio

from election2.mechanisms.redis import _resp
from tests.redis.conftest import start_nodes

CALLS = int(os.environ.get("ELECTION2_BENCH_CALLS", "3000"))
CONCURRENT = 10_000
#: A get + compare-and-delete, like a release: answers 0 on a missing key.
SCRIPT = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""
HEADER = ["client", "call", "n", "p50", "mean", "client CPU / call"]


def row(client: str, call: str, samples: list[float], cpu: float) -> list[str]:
    return [
        client,
        call,
        str(len(samples)),
        f"{_common.percentile(samples, 0.5) * 1e6:.0f} µs",
        f"{statistics.fmean(samples) * 1e6:.0f} µs",
        f"{cpu / len(samples) * 1e6:.0f} µs",
    ]


async def timed(call: Callable[[int], Awaitable[Any]]) -> tuple[list[float], float]:
    for i in range(50):  # warm up (connect, load scripts)
        await call(i)
    samples = []
    cpu = _common.cpu_seconds()
    for i in range(CALLS):
        started = time.perf_counter()
        await call(i)
        samples.append(time.perf_counter() - started)
    return samples, _common.cpu_seconds() - cpu


def timed_sync(call: Callable[[int], Any]) -> tuple[list[float], float]:
    for i in range(50):
        call(i)
    samples = []
    cpu = _common.cpu_seconds()
    for i in range(CALLS):
        started = time.perf_counter()
        call(i)
        samples.append(time.perf_counter() - started)
    return samples, _common.cpu_seconds() - cpu


async def concurrent(call: Callable[[int], Awaitable[Any]]) -> tuple[float, float]:
    """Wall time and client CPU of CONCURRENT calls started at once."""

    async def one(i: int) -> None:
        await call(i)

    cpu, started = _common.cpu_seconds(), time.perf_counter()
    async with trio.open_nursery() as nursery:
        for i in range(CONCURRENT):
            nursery.start_soon(one, i)
    return time.perf_counter() - started, _common.cpu_seconds() - cpu


def concurrent_row(client: str, wall: float, cpu: float) -> list[str]:
    return [
        client,
        str(CONCURRENT),
        f"{wall * 1000:.0f} ms",
        f"{CONCURRENT / wall:,.0f}/s",
        f"{cpu / CONCURRENT * 1e6:.1f} µs",
    ]


async def run(port: int) -> None:
    print(f"# Redis client costs under trio ({os.cpu_count()} cores, loopback redis-server)")
    rows: list[list[str]] = []
    many: list[list[str]] = []

    try:
        import redis  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        redis = None
    if redis is not None:
        sync = redis.Redis(host="127.0.0.1", port=port, decode_responses=True)
        script = sync.register_script(SCRIPT)
        rows.append(row("redis-py sync", "SET", *timed_sync(lambda i: sync.set(f"k{i}", "v"))))
        rows.append(
            row("redis-py sync", "EVALSHA", *timed_sync(lambda i: script(["missing"], ["v"])))
        )
        samples: list[float] = []
        cpu = _common.cpu_seconds()
        for _ in range(CALLS // 2):
            started = time.perf_counter()
            assert sync.set("ref", "v", nx=True, px=2000)
            sync.delete("ref")
            samples.append(time.perf_counter() - started)
        rows.append(row("redis-py sync", "SET NX PX + DEL", samples, _common.cpu_seconds() - cpu))
        cpu, started = _common.cpu_seconds(), time.perf_counter()
        pipe = sync.pipeline(transaction=False)
        for i in range(CONCURRENT):
            pipe.set(f"c{i}", "v")
        pipe.execute()
        many.append(
            concurrent_row(
                "redis-py sync, one pipeline",
                time.perf_counter() - started,
                _common.cpu_seconds() - cpu,
            )
        )
        sync.close()

    try:
        import coredis
        from coredis.retry import NoRetryPolicy
    except ImportError:
        coredis = None  # type: ignore[assignment]
    if coredis is not None:
        # As RedisNode configured it before election2 had its own client.
        async with coredis.Redis(
            host="127.0.0.1",
            port=port,
            connect_timeout=0.5,
            stream_timeout=None,
            retry_policy=NoRetryPolicy(),
            decode_responses=True,
        ) as client:
            rows.append(row("coredis", "SET", *await timed(lambda i: client.set(f"k{i}", "v"))))
            rows.append(
                row("coredis", "EVAL", *await timed(lambda i: client.eval(SCRIPT, ["m"], ["v"])))
            )
            sha = await client.script_load(SCRIPT)
            rows.append(
                row("coredis", "EVALSHA", *await timed(lambda i: client.evalsha(sha, ["m"], ["v"])))
            )
            many.append(
                concurrent_row(
                    "coredis, its pool", *await concurrent(lambda i: client.set(f"c{i}", "v"))
                )
            )

    for hiredis in (False, True):
        if hiredis and not _resp.HAVE_HIREDIS:
            continue
        name = f"RESP ({'hiredis' if hiredis else 'pure Python'} parser)"
        async with _resp.RedisClient(
            "127.0.0.1", port, connect_timeout=0.5, use_hiredis=hiredis
        ) as resp:
            rows.append(row(name, "SET", *await timed(lambda i: resp.execute("SET", f"k{i}", "v"))))
            rows.append(
                row(name, "EVALSHA", *await timed(lambda i: resp.run_script(SCRIPT, ["m"], ["v"])))
            )
            many.append(
                concurrent_row(
                    f"{name}, pipelined",
                    *await concurrent(lambda i: resp.execute("SET", f"c{i}", "v")),
                )
            )

    _common.table("Sequential calls (one at a time)", HEADER, rows)
    _common.table(
        "Concurrent calls",
        ["client", "calls", "wall", "throughput", "client CPU / call"],
        many,
    )


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        (node,) = start_nodes(Path(tmp), 1)
        try:
            await run(node.port)
        finally:
            node.kill()


if __name__ == "__main__":
    trio.run(main)
