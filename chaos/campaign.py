"""The orchestrator and the nemesis.

:func:`run_campaign` starts a backend (3 etcd members or 3 Redis masters) on
free loopback ports, the fenced store, one fault proxy per candidate and
server, and the candidate processes; lets the seeded nemesis inject faults
for ``duration`` seconds; heals everything, waits until every resource is
worked on again, stops every process it started (and checks that none is
left), then checks the histories (:mod:`chaos.report`).

The nemesis has two lanes that run at once, so at most two faults overlap:

* the **candidate lane**, one candidate at a time: SIGKILL and restart;
  SIGSTOP/SIGCONT shorter or longer than the TTL (each recorded as a
  :class:`~election2.testing.PauseRecord`); and through that candidate's
  proxies: a partition from every server or from one, its open connections
  silenced, reset, or slowed down;
* the **server lane**, one server at a time (a quorum stays up): SIGSTOP/SIGCONT
  and SIGKILL/restart of an etcd member (the current leader half of the time,
  found with ``/v3/maintenance/status``) or of a Redis master; and through
  every candidate's proxy to one server: a partition, a reset, a delay.

A Redis master runs without persistence, so a killed one comes back empty:
it is restarted no sooner than a TTL after its death (Redlock's "delayed
restarts"), when every lock it held has expired anyway.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path

import trio

from election2.testing import HistoryRecorder, PauseRecord, check_history, load_history
from tests.etcd.conftest import ELECTION_TIMEOUT_MS, EtcdMember, _start_cluster
from tests.faultproxy import FaultProxy
from tests.redis.conftest import RedisNodeProcess, start_nodes
from tests.servers import ServerProcess

from .report import CampaignResult, Fault, availability, failovers, working_terms
from .store import FencedStore

__all__ = ["run_campaign"]

ROOT = Path(__file__).resolve().parent.parent
NS = 1_000_000_000


def now_ns() -> int:
    return time.monotonic_ns()


# -- servers ---------------------------------------------------------------------------


class Cluster:
    """Three server processes of one backend."""

    name = ""
    servers: list[ServerProcess]

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self.down: set[int] = set()
        self.paused: set[int] = set()
        self.servers = []

    @property
    def endpoints(self) -> list[str]:
        raise NotImplementedError

    def url_of(self, endpoints: list[str]) -> str:
        return f"{self.name}://{','.join(endpoints)}/chaos?ttl={self.ttl:g}"

    async def start(self, directory: Path) -> None:
        raise NotImplementedError

    def _restart(self, index: int) -> None:
        self.servers[index].start()

    async def leader(self) -> int | None:
        return None

    def pause(self, index: int) -> None:
        self.paused.add(index)
        self.servers[index].pause()

    def resume(self, index: int) -> None:
        self.servers[index].resume()
        self.paused.discard(index)

    async def kill(self, index: int) -> None:
        self.down.add(index)
        await trio.to_thread.run_sync(self.servers[index].kill)

    async def restart(self, index: int) -> None:
        await trio.to_thread.run_sync(self._restart, index)
        self.down.discard(index)

    def stop(self) -> None:
        for server in self.servers:
            server.kill()


class EtcdCluster(Cluster):
    name = "etcd"
    members: list[EtcdMember]

    @property
    def endpoints(self) -> list[str]:
        return [member.endpoint for member in self.members]

    async def start(self, directory: Path) -> None:
        await trio.to_thread.run_sync(lambda: directory.mkdir(parents=True))
        self.members = await trio.to_thread.run_sync(_start_cluster, directory, 3)
        self.servers = list(self.members)
        self.ids: dict[str, int] = {}
        for index in range(3):
            status = await trio.to_thread.run_sync(self._status, index)
            if status is not None:
                self.ids[status["header"]["member_id"]] = index

    def _restart(self, index: int) -> None:
        member = self.members[index]
        member.start()  # same data dir: it rejoins as itself
        member.wait_healthy(timeout=30)

    def _status(self, index: int) -> dict[str, dict[str, str]] | None:
        request = urllib.request.Request(
            f"http://{self.members[index].endpoint}/v3/maintenance/status", data=b"{}"
        )
        try:
            with urllib.request.urlopen(request, timeout=0.5) as answer:
                status: dict[str, dict[str, str]] = json.load(answer)
                return status
        except (OSError, ValueError):
            return None

    async def leader(self) -> int | None:
        for index in range(3):
            if index in self.down or index in self.paused:
                continue
            status = await trio.to_thread.run_sync(self._status, index)
            if status is not None:
                leader = self.ids.get(str(status.get("leader", "")))
                if leader is not None:
                    return leader
        return None


class RedisCluster(Cluster):
    name = "redis"
    nodes: list[RedisNodeProcess]

    @property
    def endpoints(self) -> list[str]:
        return [node.endpoint for node in self.nodes]

    async def start(self, directory: Path) -> None:
        self.nodes = await trio.to_thread.run_sync(start_nodes, directory, 3)
        self.servers = list(self.nodes)


# -- proxies and candidates -------------------------------------------------------------


class Proxy:
    """A :class:`FaultProxy` shared by both lanes: a partition or delay ends
    only when every fault that asked for it has ended."""

    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy
        self.blackholes = 0
        self.delays: list[float] = []

    def _apply(self) -> None:
        if self.blackholes:
            self.proxy.blackhole()
        else:
            self.proxy.forward()
            self.proxy.delay(max(self.delays, default=0.0))

    def blackhole(self) -> None:
        self.blackholes += 1
        self._apply()

    def unblackhole(self) -> None:
        self.blackholes -= 1
        self._apply()

    def delay(self, seconds: float) -> None:
        self.delays.append(seconds)
        self._apply()

    def undelay(self, seconds: float) -> None:
        self.delays.remove(seconds)
        self._apply()


def each(action: Callable[[Proxy], None], proxies: list[Proxy]) -> Callable[[], None]:
    """``action`` on every proxy of ``proxies``, as one call."""

    def run() -> None:
        for proxy in proxies:
            action(proxy)

    return run


class Candidate:
    """One candidate process, restarted under the same instance id after a kill."""

    def __init__(
        self, instance_id: str, url: str, resources: tuple[str, ...], store_port: int,
        directory: Path, seed: int,
    ) -> None:  # fmt: skip
        self.instance_id = instance_id
        self.url = url
        self.resources = resources
        self.store_port = store_port
        self.history = directory / f"{instance_id}.jsonl"
        self.log = directory / f"{instance_id}.log"
        self.seed = seed
        self.incarnation = 0
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.incarnation += 1
        argv = [
            sys.executable, "-m", "chaos.candidate", self.url, self.instance_id,
            ",".join(self.resources), str(self.store_port), str(self.history),
            f"{self.seed}-{self.instance_id}-{self.incarnation}",
        ]  # fmt: skip
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )  # fmt: skip

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, signum: int) -> None:
        if self.running:
            assert self.process is not None
            os.kill(self.process.pid, signum)

    async def kill(self) -> None:
        self.signal(signal.SIGKILL)
        if self.process is not None:
            await trio.to_thread.run_sync(self.process.wait)

    async def stop(self) -> None:
        """SIGTERM (a clean close), SIGKILL after 10 s."""
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        with trio.move_on_after(10):
            while self.running:
                await trio.sleep(0.05)
        await self.kill()


# -- the nemesis ---------------------------------------------------------------------------


class Nemesis:
    def __init__(self, campaign: Campaign, seed: int) -> None:
        self.campaign = campaign
        self.candidate_rng = random.Random(f"{seed}/candidates")
        self.server_rng = random.Random(f"{seed}/servers")
        self.faults: list[Fault] = []

    async def run(self, deadline: float) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._lane, deadline, self.candidate_rng, self._candidate_fault)
            nursery.start_soon(self._lane, deadline, self.server_rng, self._server_fault)

    async def _lane(
        self,
        deadline: float,
        rng: random.Random,
        inject: Callable[[random.Random], Awaitable[None]],
    ) -> None:
        while True:
            await trio.sleep(rng.uniform(0.3, 1.5))
            if trio.current_time() >= deadline:
                return
            await inject(rng)

    async def _hold(
        self,
        kind: str,
        target: str,
        seconds: float,
        begin: Callable[[], Awaitable[None] | None],
        end: Callable[[], Awaitable[None] | None],
        detail: str = "",
    ) -> None:
        """Start a fault, keep it ``seconds``, end it (even when cancelled)."""
        fault = Fault(kind, target, now_ns(), detail=detail)
        self.faults.append(fault)
        try:
            started = begin()
            if started is not None:
                await started
            await trio.sleep(seconds)
        finally:
            with trio.CancelScope(shield=True):
                ended = end()
                if ended is not None:
                    await ended
                fault.end_ns = now_ns()

    async def _candidate_fault(self, rng: random.Random) -> None:
        ttl = self.campaign.ttl
        candidate = rng.choice(self.campaign.candidates)
        if rng.random() < 0.75:  # mostly at a master: the last writer of some resource
            writer = self.campaign.store.last_writer.get(rng.choice(self.campaign.resources))
            candidate = next(
                (c for c in self.campaign.candidates if c.instance_id == writer), candidate
            )
        name = candidate.instance_id
        proxies = self.campaign.proxies[name]
        kind = rng.choices(
            [
                "candidate-kill", "candidate-pause-short", "candidate-pause-long",
                "candidate-partition", "candidate-node-partition", "candidate-silence",
                "candidate-reset", "candidate-delay",
            ],
            weights=[2, 1.5, 1.5, 1.5, 1, 1, 1, 1],
        )[0]  # fmt: skip
        if kind == "candidate-kill":
            await self._hold(
                kind, name, rng.uniform(0.2, 1.5), candidate.kill,
                lambda: trio.to_thread.run_sync(candidate.start),
            )  # fmt: skip
        elif kind.startswith("candidate-pause"):
            seconds = (
                rng.uniform(0.1, 0.8 * ttl)
                if kind.endswith("short")
                else rng.uniform(1.2 * ttl, 3 * ttl)
            )
            start = now_ns()
            try:
                await self._hold(
                    kind, name, seconds, lambda: candidate.signal(signal.SIGSTOP),
                    lambda: candidate.signal(signal.SIGCONT), detail=f"{seconds:.2f} s",
                )  # fmt: skip
            finally:
                self.campaign.pauses.write(PauseRecord(name, start, now_ns()))
        elif kind == "candidate-partition":
            await self._hold(
                kind, name, rng.uniform(0.3, 2 * ttl),
                each(Proxy.blackhole, proxies),
                each(Proxy.unblackhole, proxies),
            )  # fmt: skip
        elif kind == "candidate-node-partition":
            index = rng.randrange(len(proxies))
            proxy = proxies[index]
            await self._hold(
                kind, name, rng.uniform(0.5, 2 * ttl), proxy.blackhole, proxy.unblackhole,
                detail=f"node {index}",
            )  # fmt: skip
        elif kind == "candidate-silence":
            await self._hold(
                kind, name, 0.0,
                each(lambda proxy: proxy.proxy.silence_existing(), proxies),
                lambda: None,
            )  # fmt: skip
            await trio.sleep(rng.uniform(0.5, ttl))
        elif kind == "candidate-reset":
            await self._reset(kind, name, proxies)
        else:
            await self._delay(
                kind, name, proxies, rng.uniform(0.05, 0.5), rng.uniform(0.5, 2 * ttl)
            )

    async def _server_fault(self, rng: random.Random) -> None:
        ttl = self.campaign.ttl
        cluster = self.campaign.cluster
        backend = cluster.name
        kind = rng.choices(
            [f"{backend}-pause", f"{backend}-kill", "node-partition", "node-reset", "node-delay"],
            weights=[2, 2, 1.5, 1, 1],
        )[0]
        index = rng.randrange(3)
        if backend == "etcd" and kind.startswith("etcd-") and rng.random() < 0.5:
            leader = await cluster.leader()
            if leader is not None:
                index = leader
                kind = kind.replace("etcd-", "etcd-leader-")
        target = f"{backend}-{index}"
        through = [proxies[index] for proxies in self.campaign.proxies.values()]
        if kind.endswith("-pause"):
            seconds = rng.uniform(0.3, 2 * ttl)
            leader = await cluster.leader() if backend == "etcd" else None
            if backend == "etcd" and not self.campaign.stuck_leaders and leader in (index, None):
                # etcd 3.4.23 (Debian's) has etcd-io/etcd#15247: a leader
                # stuck past the election timeout revokes, when it resumes,
                # the leases the new leader kept alive. Leaders are paused
                # below the election timeout unless asked (--stuck-etcd-leaders).
                seconds = rng.uniform(0.1, ELECTION_TIMEOUT_MS / 1000 * 0.8)
            await self._hold(
                kind, target, seconds,
                lambda: cluster.pause(index), lambda: cluster.resume(index),
            )  # fmt: skip
        elif kind.endswith("-kill"):
            # A Redis master comes back empty: not before every lock it held expired.
            seconds = rng.uniform(ttl + 0.2, ttl + 2) if backend == "redis" else rng.uniform(0.5, 3)
            await self._hold(
                kind, target, seconds, lambda: cluster.kill(index), lambda: cluster.restart(index)
            )
        elif kind == "node-partition":
            await self._hold(
                kind, target, rng.uniform(0.5, 2 * ttl),
                each(Proxy.blackhole, through),
                each(Proxy.unblackhole, through),
            )  # fmt: skip
        elif kind == "node-reset":
            await self._reset(kind, target, through)
        else:
            await self._delay(
                kind, target, through, rng.uniform(0.02, 0.3), rng.uniform(0.5, 2 * ttl)
            )

    async def _reset(self, kind: str, target: str, proxies: list[Proxy]) -> None:
        """Reset every connection through ``proxies`` (a fault with no duration)."""
        await self._hold(kind, target, 0.0, each(lambda p: p.proxy.reset(), proxies), lambda: None)

    async def _delay(
        self, kind: str, target: str, proxies: list[Proxy], delay: float, seconds: float
    ) -> None:
        """Add ``delay`` to everything through ``proxies`` for ``seconds``."""
        await self._hold(
            kind, target, seconds,
            each(lambda proxy: proxy.delay(delay), proxies),
            each(lambda proxy: proxy.undelay(delay), proxies),
            detail=f"{delay * 1000:.0f} ms",
        )  # fmt: skip


# -- the campaign ------------------------------------------------------------------------


class Campaign:
    def __init__(
        self, backend: str, seed: int, duration: float, directory: Path, *, ttl: float,
        candidates: int, resources: tuple[str, ...], stuck_leaders: bool = False,
    ) -> None:  # fmt: skip
        self.backend = backend
        self.stuck_leaders = stuck_leaders
        self.seed = seed
        self.duration = duration
        self.directory = directory
        self.ttl = ttl
        self.resources = resources
        self.candidate_count = candidates
        self.cluster: Cluster = EtcdCluster(ttl) if backend == "etcd" else RedisCluster(ttl)
        self.store = FencedStore()
        self.proxies: dict[str, list[Proxy]] = {}
        self.candidates: list[Candidate] = []
        self.pauses = HistoryRecorder("nemesis", directory / "pauses.jsonl")

    async def run(self) -> CampaignResult:
        leftover: list[str] = []
        # Children that were there before (a test session's own servers) are not ours.
        before = set(children_of(os.getpid()))
        try:
            async with AsyncExitStack() as stack:
                stack.callback(self.cluster.stop)
                await self.cluster.start(self.directory / "servers")
                nursery = await stack.enter_async_context(trio.open_nursery())
                stack.callback(nursery.cancel_scope.cancel)
                await nursery.start(self.store.run)
                for number in range(self.candidate_count):
                    name = f"c{number}"
                    own = [FaultProxy(endpoint) for endpoint in self.cluster.endpoints]
                    for proxy in own:
                        await nursery.start(proxy.run)
                    self.proxies[name] = [Proxy(proxy) for proxy in own]
                    url = self.cluster.url_of([proxy.endpoint for proxy in own])
                    self.candidates.append(
                        Candidate(
                            name, url, self.resources, self.store.port, self.directory, self.seed
                        )
                    )
                try:
                    result = await self._campaign()
                finally:
                    with trio.CancelScope(shield=True):
                        for candidate in self.candidates:
                            await candidate.stop()
        finally:
            self.pauses.close()
        for candidate in self.candidates:
            if candidate.running:
                leftover.append(f"candidate {candidate.instance_id}")
        for server in self.cluster.servers:
            if server.process is not None and server.process.poll() is None:
                leftover.append(server.name)
        leftover += [child for child in children_of(os.getpid()) if child not in before]
        return self._result(result, leftover)

    async def _campaign(self) -> tuple[int, int, bool, list[Fault]]:
        for candidate in self.candidates:
            candidate.start()
        with trio.fail_after(60):
            while any(self.store.accepted[r] == 0 for r in self.resources):
                await trio.sleep(0.05)
        begin_ns = now_ns()
        nemesis = Nemesis(self, self.seed)
        await nemesis.run(trio.current_time() + self.duration)
        # Everything is healed (each fault ends itself); candidates killed last
        # were restarted. Settle: every resource must be worked on again.
        healed = dict(self.store.accepted)
        recovered = False
        with trio.move_on_after(6 * self.ttl + 10):
            while any(self.store.accepted[r] <= healed.get(r, 0) for r in self.resources):
                await trio.sleep(0.05)
            recovered = True
        await trio.sleep(1.0)
        end_ns = now_ns()
        return begin_ns, end_ns, recovered, nemesis.faults

    def _result(
        self, campaign: tuple[int, int, bool, list[Fault]], leftover: list[str]
    ) -> CampaignResult:
        begin_ns, end_ns, recovered, faults = campaign
        with (self.directory / "faults.jsonl").open("w") as log:
            for fault in faults:
                log.write(json.dumps(dataclasses.asdict(fault)) + "\n")
        paths = [c.history for c in self.candidates if c.history.exists()]
        history = load_history(*paths, self.directory / "pauses.jsonl")
        terms = working_terms(history)
        result = CampaignResult(
            backend=self.backend,
            seed=self.seed,
            duration=self.duration,
            ttl=self.ttl,
            candidates=self.candidate_count,
            resources=self.resources,
            faults=faults,
            check=check_history(history),
            availability={
                r: availability(terms.get(r, []), begin_ns, end_ns) for r in self.resources
            },
            failovers=failovers(
                faults,
                terms,
                round(self.ttl * NS),
                frozenset(c.instance_id for c in self.candidates),
                end_ns,
            ),
            writes_accepted=sum(self.store.accepted.values()),
            writes_refused=sum(self.store.refused.values()),
            recovered=recovered,
            leftover=leftover,
        )
        (self.directory / "result.json").write_text(json.dumps(result.summary(), indent=1))
        return result


def children_of(pid: int) -> list[str]:
    """Live (not zombie) child processes of ``pid``, as ``name[pid]``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name, _, rest = stat.rpartition(")")[0].partition("(")[2], None, stat.rpartition(")")[2]
        fields = rest.split()
        if len(fields) > 1 and fields[0] != "Z" and int(fields[1]) == pid:
            found.append(f"{name}[{entry.name}]")
    return found


async def run_campaign(
    backend: str,
    seed: int,
    duration: float,
    *,
    ttl: float = 2.0,
    candidates: int = 5,
    resources: tuple[str, ...] = ("r0", "r1", "r2"),
    directory: Path | None = None,
    stuck_leaders: bool = False,
) -> CampaignResult:
    """Run one campaign against ``backend`` ("etcd" or "redis"); see the module docstring.

    Records, logs and server data go to ``directory`` (a temporary one, removed
    afterwards, when None).
    """
    if backend not in ("etcd", "redis"):
        raise ValueError(f"unknown backend {backend!r}: etcd or redis")
    if directory is not None:
        await trio.to_thread.run_sync(lambda: directory.mkdir(parents=True, exist_ok=True))
        return await Campaign(
            backend, seed, duration, directory, ttl=ttl, candidates=candidates,
            resources=resources, stuck_leaders=stuck_leaders,
        ).run()  # fmt: skip
    with tempfile.TemporaryDirectory(prefix=f"chaos-{backend}-") as temporary:
        return await Campaign(
            backend, seed, duration, Path(temporary), ttl=ttl, candidates=candidates,
            resources=resources, stuck_leaders=stuck_leaders,
        ).run()  # fmt: skip
