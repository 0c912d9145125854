"""etcd benchmarks: handover vs etcdctl, failover after SIGKILL, 10k resources.

Starts its own etcd on free loopback ports. Run: ``python bench/bench_etcd.py``
(``ELECTION2_BENCH_RESOURCES=1000`` for a quicker run).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import _common
import trio

import election2
from election2.mechanisms.etcd import EtcdFactory
from tests.etcd.conftest import EtcdMember, _start_cluster

TTL = 2.0
ROUNDS = 30


def etcdctl_handover(endpoint: str, rounds: int) -> list[float]:
    """Two ``etcdctl elect`` processes (Go client); the holder is interrupted."""
    with _common.etcdctl_handover(endpoint) as batch:
        return batch(rounds)


async def failover_after_sigkill(endpoint: str, rounds: int) -> list[float]:
    script = (
        "import sys, trio, election2\n"
        "async def main():\n"
        "    async with election2.open_factory(sys.argv[1], instance_id='victim') as f:\n"
        "        e = await f.new_election('job')\n"
        "        await e.await_mastership()\n"
        "        print('MASTER', flush=True)\n"
        "        await trio.sleep_forever()\n"
        "trio.run(main)\n"
    )
    samples = []
    for _ in range(rounds):
        url = f"etcd://{endpoint}/bench-{uuid.uuid4().hex[:8]}?ttl={TTL:g}"
        victim = await trio.to_thread.run_sync(
            lambda url=url: subprocess.Popen(
                [sys.executable, "-c", script, url], stdout=subprocess.PIPE
            )
        )
        assert victim.stdout is not None
        await trio.to_thread.run_sync(victim.stdout.readline)
        async with election2.open_factory(url, instance_id="survivor") as factory:
            election = await factory.new_election("job")
            killed = time.perf_counter()
            victim.kill()
            await election.await_mastership()
            samples.append(time.perf_counter() - killed)
        victim.wait(5)
    return samples


async def many_resources(endpoint: str, count: int) -> list[list[str]]:
    rows = []
    for n in sorted({100, count}):
        url = f"etcd://{endpoint}/bench-{uuid.uuid4().hex[:8]}?ttl=10"
        async with election2.open_factory(url, instance_id="owner") as factory:
            assert isinstance(factory, EtcdFactory)
            calls = _common.CallCounter()
            factory.client.call = calls.wrap(factory.client.call)  # type: ignore[method-assign]
            result = await _common.many_resources(factory, n, calls)
            rows.append(
                [
                    str(n),
                    f"{result.acquire_all:.2f} s",
                    f"{result.bytes_per_election / 1024:.1f} KiB",
                    f"{result.idle_cpu * 100:.2f} %",
                    f"{result.calls_per_second:.2f}",
                ]
            )
    return rows


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        (member,) = _start_cluster(Path(tmp), 1)
        try:
            await run(member)
        finally:
            member.kill()


async def run(member: EtcdMember) -> None:
    endpoint = member.endpoint
    print(f"# etcd benchmarks (etcd on loopback, ttl {TTL:g} s, {os.cpu_count()} cores)")
    reference = await trio.to_thread.run_sync(etcdctl_handover, endpoint, ROUNDS // 2)
    url = f"etcd://{endpoint}/bench-{uuid.uuid4().hex[:8]}?ttl={TTL:g}"
    ours = await _common.handover_samples(url, ROUNDS)
    _common.table(
        "Handover after resign()",
        _common.LATENCY_HEADER,
        [
            _common.latency_row("etcdctl elect -> etcdctl elect (Go)", reference, None),
            _common.latency_row("election2 -> election2", ours, reference),
        ],
    )
    failovers = await failover_after_sigkill(endpoint, 3)
    _common.table(
        "Failover after SIGKILL of the master",
        ["ttl", "runs", "median", "max", "median / ttl", "max - ttl"],
        [
            [
                f"{TTL:g} s",
                str(len(failovers)),
                f"{_common.percentile(failovers, 0.5):.3f} s",
                f"{max(failovers):.3f} s",
                f"{_common.percentile(failovers, 0.5) / TTL:.2f}",
                f"{max(failovers) - TTL:+.3f} s",
            ]
        ],
    )
    _common.table(
        "One factory, many resources (ttl 10 s; idle measured over 10 s)",
        [
            "resources",
            "acquire all",
            "memory / election",
            "idle CPU (one core)",
            "etcd calls/s idle",
        ],
        await many_resources(endpoint, _common.scale()),
    )


if __name__ == "__main__":
    trio.run(main)
