"""election2 against the peers a user would pick instead, in the same run.

Starts its own etcd, three redis-server processes and a ZooKeeper server
(Debian's ``zookeeper`` package: ``java -cp /usr/share/java/zookeeper.jar``
with a generated zoo.cfg) on free loopback ports, each with a temporary data
dir, and stops them at the end. Every server keeps its default durability:
etcd's WAL and ZooKeeper's transaction log are synced, Redis persists nothing.

1. Uncontended acquire + release, every contender of every backend in one run,
   interleaved: rounds alternate between contenders (the order reversed every
   other round) so machine noise hits them alike. References: on Redis, one
   node's ``SET NX PX`` + ``DEL`` with redis-py (sync; the coredis one is shown
   too); on etcd, one compare-and-put txn (+ one delete) on the same JSON
   gateway with httpx, the HTTP client election2 uses; on ZooKeeper, kazoo's
   ``Lock``.
2. Handover after release (a waiter blocked in its acquire while the holder
   releases), interleaved the same way. References: two ``etcdctl elect``
   processes for etcd, python-redis-lock for Redis.
3. Holding ``ELECTION2_BENCH_RESOURCES`` (10,000) resources in one process,
   each holder in a fresh child process: time to acquire them all (64 at a
   time), RSS per held resource, and the time to close: leaving
   ``open_factory`` for election2, ``KazooClient.stop()`` + ``close()`` for a
   kazoo session holding as many ``Lock``\\ s.

The peers (kazoo, tooz with its etcd3gw, redis and zookeeper drivers, pottery,
python-redis-lock, redis-py) are installed by the bench session only. One that
cannot run is printed as "not measured: <why> (install: <command>)".

Run: ``python bench/bench_peers.py``; ``ELECTION2_BENCH_ROUNDS=5`` and
``ELECTION2_BENCH_RESOURCES=1000`` for a quicker run.
"""

from __future__ import annotations

import base64
import gc
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import _common
import trio
from _common import NotMeasured, Pair, SyncBatch, need

import election2
from tests.etcd.conftest import EtcdMember, _start_cluster
from tests.redis.conftest import RedisNodeProcess, start_nodes

TTL = 2.0
PER_ROUND = 10  # uncontended samples per contender per round
HANDOVERS_PER_ROUND = 3
PIP = {
    "redis": "pip install redis",
    "redis_lock": "pip install python-redis-lock",
    "pottery": "pip install pottery",
    "tooz": "pip install tooz",
    "etcd3gw": "pip install etcd3gw",
    "kazoo": "pip install kazoo",
}
PEER_PACKAGES = ["kazoo", "tooz", "etcd3gw", "pottery", "python-redis-lock", "redis", "coredis"]


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def redis_url(nodes: list[RedisNodeProcess], ttl: float = TTL) -> str:
    hosts = ",".join(node.endpoint for node in nodes)
    return f"redis://{hosts}/{unique('bench')}?ttl={ttl:g}"


def etcd_url(endpoint: str, ttl: float = TTL) -> str:
    return f"etcd://{endpoint}/{unique('bench')}?ttl={ttl:g}"


# -- uncontended acquire + release ------------------------------------------


@asynccontextmanager
async def election2_pairs(url: str) -> AsyncIterator[_common.Batch[Pair]]:
    """``await_mastership()`` + ``resign()`` of one election, nobody else competing."""
    async with election2.open_factory(url, instance_id="a") as factory:
        election = await factory.new_election("job")
        await election.await_mastership()  # warm the connections
        await election.resign()
        yield partial(_common.async_timed_pairs, election.await_mastership, election.resign)


@contextmanager
def redis_py_set_del(port: int) -> Iterator[SyncBatch[Pair]]:
    redis = need("redis", PIP["redis"])
    client = redis.Redis(host="127.0.0.1", port=port)
    key = unique("ref")

    def acquire() -> None:
        assert client.set(key, "v", nx=True, px=int(TTL * 1000))

    def release() -> None:
        client.delete(key)

    acquire()
    release()
    try:
        yield partial(_common.timed_pairs, acquire, release)
    finally:
        client.close()


@asynccontextmanager
async def coredis_set_del(port: int) -> AsyncIterator[_common.Batch[Pair]]:
    import coredis

    key = unique("ref")
    async with coredis.Redis(host="127.0.0.1", port=port, decode_responses=True) as client:

        async def acquire() -> None:
            assert await client.set(key, "v", condition=coredis.PureToken.NX, px=int(TTL * 1000))

        async def release() -> None:
            await client.delete([key])

        await acquire()
        await release()
        yield partial(_common.async_timed_pairs, acquire, release)


@contextmanager
def python_redis_lock_pairs(port: int) -> Iterator[SyncBatch[Pair]]:
    redis = need("redis", PIP["redis"])
    redis_lock = need("redis_lock", PIP["redis_lock"])
    client = redis.Redis(host="127.0.0.1", port=port)
    lock = redis_lock.Lock(client, unique("prl"), expire=int(TTL))

    def acquire() -> None:
        assert lock.acquire()

    acquire()
    lock.release()
    try:
        yield partial(_common.timed_pairs, acquire, lock.release)
    finally:
        client.close()


@contextmanager
def pottery_pairs(port: int) -> Iterator[SyncBatch[Pair]]:
    redis = need("redis", PIP["redis"])
    pottery = need("pottery", PIP["pottery"])
    client = redis.Redis(host="127.0.0.1", port=port)
    lock = pottery.Redlock(key=unique("pottery"), masters={client}, auto_release_time=TTL)

    def acquire() -> None:
        assert lock.acquire()

    acquire()
    lock.release()
    try:
        yield partial(_common.timed_pairs, acquire, lock.release)
    finally:
        client.close()


@contextmanager
def tooz_pairs(backend_url: str, member: str) -> Iterator[SyncBatch[Pair]]:
    """A tooz coordinator's lock (no heartbeat thread: one lock, no groups)."""
    coordination = need("tooz.coordination", PIP["tooz"])
    coordinator = coordination.get_coordinator(backend_url, member.encode())
    coordinator.start()
    lock = coordinator.get_lock(unique("tooz").encode())

    def acquire() -> None:
        assert lock.acquire(blocking=True)

    try:
        acquire()
        lock.release()
        yield partial(_common.timed_pairs, acquire, lock.release)
    finally:
        coordinator.stop()


@asynccontextmanager
async def etcd_txn_reference(endpoint: str) -> AsyncIterator[_common.Batch[Pair]]:
    """The least a lock on etcd's gateway can do: one compare-and-put txn
    (create if absent, on a lease granted beforehand) to acquire, one delete
    to release, through httpx as election2 does."""
    import httpx

    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    async with httpx.AsyncClient(base_url=f"http://{endpoint}") as client:
        grant = await client.post("/v3/lease/grant", json={"TTL": 600})
        lease = grant.raise_for_status().json()["ID"]
        key = b64(unique("bench-ref/"))
        txn = {
            "compare": [{"key": key, "result": "EQUAL", "target": "CREATE", "create_revision": 0}],
            "success": [{"request_put": {"key": key, "value": b64("owner"), "lease": lease}}],
        }

        async def acquire() -> None:
            answer = await client.post("/v3/kv/txn", json=txn)
            assert answer.raise_for_status().json().get("succeeded") is True

        async def release() -> None:
            (await client.post("/v3/kv/deleterange", json={"key": key})).raise_for_status()

        await acquire()
        await release()
        try:
            yield partial(_common.async_timed_pairs, acquire, release)
        finally:
            await client.post("/v3/lease/revoke", json={"ID": lease})


@contextmanager
def kazoo_client(hosts: str) -> Iterator[Any]:
    kazoo_client = need("kazoo.client", PIP["kazoo"])
    client = kazoo_client.KazooClient(hosts=hosts, timeout=10)
    client.start(timeout=10)
    try:
        yield client
    finally:
        client.stop()
        client.close()


@contextmanager
def kazoo_lock_pairs(hosts: str) -> Iterator[SyncBatch[Pair]]:
    with kazoo_client(hosts) as client:
        lock = client.Lock(f"/{unique('lock')}", "owner")

        def acquire() -> None:
            assert lock.acquire(timeout=10)

        acquire()
        lock.release()
        yield partial(_common.timed_pairs, acquire, lock.release)


@contextmanager
def kazoo_election_pairs(hosts: str) -> Iterator[SyncBatch[Pair]]:
    """``Election.run(f)``: acquire, call ``f`` (which stamps the win), release."""
    with kazoo_client(hosts) as client:
        election = client.Election(f"/{unique('election')}", "owner")

        def batch(count: int) -> list[Pair]:
            samples = []
            for _ in range(count):
                won: list[float] = []
                started = time.perf_counter()
                election.run(lambda won=won: won.append(time.perf_counter()))
                samples.append((won[0] - started, time.perf_counter() - started))
            return samples

        batch(1)
        yield batch


# -- handover ------------------------------------------------------------------


def threaded_handover(
    holder_release: Callable[[], object], waiter_acquire: Callable[[], object]
) -> float:
    """The waiter blocks in its acquire in a thread; the holder releases. The
    sample runs from the start of the release to the waiter's return."""
    won = threading.Event()

    def wait() -> None:
        waiter_acquire()
        won.set()

    thread = threading.Thread(target=wait)
    thread.start()
    time.sleep(_common.QUEUED)  # the waiter is queued
    started = time.perf_counter()
    holder_release()
    if not won.wait(10):
        raise TimeoutError("the waiter did not win within 10 s")
    sample = time.perf_counter() - started
    thread.join()
    return sample


def alternate(locks: list[Any], acquire: Callable[[Any], object]) -> SyncBatch[float]:
    """A batch of handovers between two lock objects taking turns."""
    turn = 0

    def batch(count: int) -> list[float]:
        nonlocal turn
        samples = []
        for _ in range(count):
            holder, waiter = locks[turn % 2], locks[(turn + 1) % 2]
            turn += 1
            samples.append(threaded_handover(holder.release, partial(acquire, waiter)))
        return samples

    batch.holder = lambda: locks[turn % 2]  # type: ignore[attr-defined]
    return batch


@contextmanager
def python_redis_lock_handover(port: int) -> Iterator[SyncBatch[float]]:
    """Two clients, one lock name: the waiter sits in ``acquire()`` (BLPOP on
    the lock's signal list) while the holder releases."""
    redis = need("redis", PIP["redis"])
    redis_lock = need("redis_lock", PIP["redis_lock"])
    clients = [redis.Redis(host="127.0.0.1", port=port) for _ in range(2)]
    name = unique("prl")
    # renewed like election2's (a batch of the other contenders outlasts the ttl)
    locks = [
        redis_lock.Lock(client, name, expire=int(TTL), auto_renewal=True) for client in clients
    ]
    locks[0].acquire()
    batch = alternate(locks, lambda lock: lock.acquire())
    try:
        yield batch
    finally:
        batch.holder().release()  # type: ignore[attr-defined]
        for client in clients:
            client.close()


@contextmanager
def kazoo_lock_handover(hosts: str) -> Iterator[SyncBatch[float]]:
    """Two ZooKeeper sessions, one lock path: the waiter watches its
    predecessor node inside ``acquire()`` while the holder releases."""
    with kazoo_client(hosts) as first, kazoo_client(hosts) as second:
        path = f"/{unique('handover')}"
        locks = [first.Lock(path, "a"), second.Lock(path, "b")]
        locks[0].acquire(timeout=10)
        batch = alternate(locks, lambda lock: lock.acquire(timeout=10))
        yield batch
        batch.holder().release()  # type: ignore[attr-defined]


# -- many held resources, each holder in a fresh process -----------------------


async def hold_election2(url: str, count: int) -> dict[str, float]:
    async with election2.open_factory(url, instance_id="owner") as factory:
        gc.collect()
        base = _common.rss_bytes()
        elections = [await factory.new_election(f"r{i}") for i in range(count)]
        queue = iter(elections)

        # 64 workers, like kazoo's 64 threads: not one waiting task per
        # election, whose memory would stay in the RSS measured below.
        async def acquire() -> None:
            for election in queue:
                await election.await_mastership()

        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(64):
                nursery.start_soon(acquire)
        acquired = time.perf_counter() - started
        assert all(election.is_master for election in elections)
        gc.collect()
        rss = (_common.rss_bytes() - base) / count
        closing = time.perf_counter()
    return {"acquire": acquired, "rss": rss, "close": time.perf_counter() - closing}


def hold_kazoo(hosts: str, count: int) -> dict[str, float]:
    """One session, ``count`` kazoo ``Lock``\\ s on distinct paths, acquired
    by 64 threads at a time (kazoo's API blocks); closing the session lets
    ZooKeeper delete every lock node."""
    with ThreadPoolExecutor(64) as pool, kazoo_client(hosts) as client:
        root = f"/{unique('hold')}"
        client.ensure_path(root)
        gc.collect()
        base = _common.rss_bytes()
        locks = [client.Lock(f"{root}/r{i}", "owner") for i in range(count)]
        started = time.perf_counter()
        assert all(pool.map(lambda lock: lock.acquire(timeout=60), locks))
        acquired = time.perf_counter() - started
        gc.collect()
        rss = (_common.rss_bytes() - base) / count
        closing = time.perf_counter()
        client.stop()
        client.close()
        closed = time.perf_counter() - closing
    return {"acquire": acquired, "rss": rss, "close": closed}


async def held(kind: str, target: str, count: int) -> dict[str, float]:
    """Run one holder in a child process (a clean RSS baseline)."""
    argv = [sys.executable, __file__, "--hold", kind, target, str(count)]
    with trio.fail_after(600):
        done = await trio.run_process(argv, capture_stdout=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} holder exited with {done.returncode}")
    result: dict[str, float] = json.loads(done.stdout.decode().splitlines()[-1])
    return result


def hold_main(kind: str, target: str, count: int) -> None:
    if kind == "kazoo":
        result = hold_kazoo(target, count)
    else:
        result = trio.run(hold_election2, target, count)
    print(json.dumps(result), flush=True)


# -- the run ---------------------------------------------------------------------


def versions(etcd: EtcdMember, zookeeper: _common.ZooKeeperServer | None) -> str:
    parts = []
    for binary in ("etcd", "redis-server"):
        try:
            out = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
            word = out.split()[2] if binary == "etcd" else out.split()[2].removeprefix("v=")
            parts.append(f"{binary} {word}")
        except (OSError, IndexError):
            parts.append(f"{binary} ?")
    if zookeeper is not None:
        parts.append(f"ZooKeeper {zookeeper.version()}")
    for package in PEER_PACKAGES:
        try:
            parts.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            parts.append(f"{package} (not installed)")
    return ", ".join(parts)


def zookeeper_hosts(zookeeper: _common.ZooKeeperServer | None, why: str) -> str:
    if zookeeper is None:
        raise NotMeasured(why)  # why names the install command
    return zookeeper.hosts


def threaded(opener: Callable[[], Any]) -> _common.Opener[Any]:
    return partial(_common.in_thread, opener)


async def run(
    etcd: EtcdMember,
    nodes: list[RedisNodeProcess],
    zookeeper: _common.ZooKeeperServer | None,
    zk_why: str,
) -> None:
    port, endpoint = nodes[0].port, etcd.endpoint
    rounds = _common.rounds(30)

    def zk() -> str:
        return zookeeper_hosts(zookeeper, zk_why)

    print(f"# Peers (loopback, ttl {TTL:g} s, {os.cpu_count()} cores): {versions(etcd, zookeeper)}")

    redis_ref = "redis-py SET NX PX + DEL (sync), 1 node"
    etcd_ref = "one compare-and-put txn + delete (httpx)"
    zk_ref = "kazoo Lock"
    pairs_openers: dict[str, _common.Opener[Pair]] = {
        redis_ref: threaded(partial(redis_py_set_del, port)),
        "coredis SET NX PX + DEL, 1 node": partial(coredis_set_del, port),
        "election2 redis, 1 node": partial(election2_pairs, redis_url(nodes[:1])),
        "python-redis-lock": threaded(partial(python_redis_lock_pairs, port)),
        "pottery Redlock, 1 node": threaded(partial(pottery_pairs, port)),
        "tooz redis driver": threaded(partial(tooz_pairs, f"redis://127.0.0.1:{port}", "bench")),
        etcd_ref: partial(etcd_txn_reference, endpoint),
        "election2 etcd": partial(election2_pairs, etcd_url(endpoint)),
        "tooz etcd3gw driver": threaded(
            partial(tooz_pairs, f"etcd3+http://{endpoint}?api_version=v3", "bench")
        ),
        zk_ref: threaded(lambda: kazoo_lock_pairs(zk())),
        "kazoo Election.run()": threaded(lambda: kazoo_election_pairs(zk())),
        "tooz zookeeper driver": threaded(
            lambda: tooz_pairs(f"zookeeper://{zk()}?timeout=10", "bench")
        ),
    }
    pairs, gone = await _common.interleaved(pairs_openers, rounds, PER_ROUND)
    totals = {name: [total for _, total in samples] for name, samples in pairs.items()}
    acquires = {name: [acquire for acquire, _ in samples] for name, samples in pairs.items()}

    def rows(names: list[str], of: dict[str, list[float]], reference: str) -> list[list[str]]:
        return [_common.ratio_row(n, of[n], reference, of) for n in names if n in of]

    interleaving = f"{rounds} rounds x {PER_ROUND}, interleaved"
    names = list(pairs_openers)
    redis_names, etcd_names, zk_names = names[:6], names[6:9], names[9:]
    _common.table(
        f"Redis, one node: uncontended acquire + release (reference: redis-py; {interleaving})",
        _common.RATIO_HEADER,
        rows(redis_names, totals, redis_ref),
    )
    _common.report_not_measured({n: gone[n] for n in redis_names if n in gone})
    _common.table(
        f"etcd: uncontended acquire (reference: one txn; {interleaving})",
        _common.RATIO_HEADER,
        rows(etcd_names, acquires, etcd_ref),
    )
    _common.table(
        f"etcd: uncontended acquire + release (reference: txn + delete; {interleaving})",
        _common.RATIO_HEADER,
        rows(etcd_names, totals, etcd_ref),
    )
    _common.report_not_measured({n: gone[n] for n in etcd_names if n in gone})
    _common.table(
        f"ZooKeeper: uncontended acquire + release (reference: kazoo Lock; {interleaving})",
        _common.RATIO_HEADER,
        rows(zk_names, totals, zk_ref),
    )
    _common.report_not_measured({n: gone[n] for n in zk_names if n in gone})

    handover_rounds = _common.rounds(30) // 3 or 1
    ctl_ref, prl_ref = "etcdctl elect pair (Go)", "python-redis-lock"
    handover_openers: dict[str, _common.Opener[float]] = {
        ctl_ref: threaded(partial(_common.etcdctl_handover, endpoint)),
        "election2 etcd": partial(_common.election2_handover, etcd_url(endpoint)),
        prl_ref: threaded(partial(python_redis_lock_handover, port)),
        "election2 redis, 1 node": partial(_common.election2_handover, redis_url(nodes[:1])),
        "election2 redis, 3 nodes": partial(_common.election2_handover, redis_url(nodes)),
        "kazoo Lock": threaded(lambda: kazoo_lock_handover(zk())),
    }
    handovers, gone = await _common.interleaved(
        handover_openers, handover_rounds, HANDOVERS_PER_ROUND
    )
    short = {None: "", ctl_ref: "etcdctl", prl_ref: "python-redis-lock"}
    reference_of: dict[str, str | None] = {
        ctl_ref: None,
        "election2 etcd": ctl_ref,
        prl_ref: None,
        "election2 redis, 1 node": prl_ref,
        "election2 redis, 3 nodes": prl_ref,
        "kazoo Lock": ctl_ref,
    }
    _common.table(
        f"Handover after release ({handover_rounds} rounds x {HANDOVERS_PER_ROUND}, interleaved)",
        _common.RATIO_HEADER,
        [
            _common.ratio_row(
                name, samples, reference_of[name], handovers, short[reference_of[name]]
            )
            for name, samples in handovers.items()
        ],
    )
    _common.report_not_measured({f"handover, {name}": why for name, why in gone.items()})

    count = _common.scale()
    holders: list[tuple[str, str, str]] = [
        ("election2 etcd", "etcd", etcd_url(endpoint, ttl=10)),
        ("election2 redis, 3 nodes", "redis", redis_url(nodes, ttl=10)),
    ]
    missing: dict[str, str] = {}
    if zookeeper is not None:
        holders.append(("kazoo Lock, one session", "kazoo", zookeeper.hosts))
    else:
        missing[f"holding {count}, kazoo Lock, one session"] = zk_why
    results: dict[str, dict[str, float]] = {}
    for name, kind, target in holders:
        try:
            results[name] = await held(kind, target, count)
        except Exception as error:
            missing[f"holding {count}, {name}"] = f"{type(error).__name__}: {error}"
    kazoo = results.get("kazoo Lock, one session")

    def versus(value: float, key: str) -> str:
        return f"{value / kazoo[key]:.2f}x" if kazoo else "n/a"

    _common.table(
        f"Holding {count} resources in one process (ttl 10 s; a fresh process each)",
        ["holder", "acquire all", "RSS / held", "close", "RSS vs kazoo", "close vs kazoo"],
        [
            [
                name,
                f"{result['acquire']:.2f} s",
                f"{result['rss'] / 1024:.1f} KiB",
                f"{result['close'] * 1000:.0f} ms",
                versus(result["rss"], "rss"),
                versus(result["close"], "close"),
            ]
            for name, result in results.items()
        ],
    )
    print(
        "\n(close: leaving `open_factory` with every election held, for election2;"
        " `KazooClient.stop()` + `close()` for kazoo.)"
    )
    _common.report_not_measured(missing)


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "etcd").mkdir()
        (etcd,) = _start_cluster(Path(tmp) / "etcd", 1)
        nodes: list[RedisNodeProcess] = []
        zookeeper: _common.ZooKeeperServer | None = None
        zk_why = ""
        try:
            nodes = start_nodes(Path(tmp) / "redis", 3)
            try:
                zookeeper = _common.ZooKeeperServer(Path(tmp) / "zookeeper")
                zookeeper.start()
            except (NotMeasured, TimeoutError, OSError) as why:
                if zookeeper is not None:
                    zookeeper.kill()
                zookeeper, zk_why = None, str(why)
                print(f"!!! not measured: every ZooKeeper peer: {why}", file=sys.stderr)
            await run(etcd, nodes, zookeeper, zk_why)
        finally:
            etcd.kill()
            for node in nodes:
                node.kill()
            if zookeeper is not None:
                zookeeper.stop()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--hold"]:
        hold_main(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        trio.run(main)
