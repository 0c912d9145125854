"""Elections on etcd, laid out like etcd's own ``concurrency.Election``.

One lease per factory, kept alive by the core's renewal loop, and one prefix
watch per factory feeding every election: the cost at rest does not grow with
the number of resources. A candidate puts ``<PREFIX>/<resource>/<lease hex>``
(value: its instance id) on the factory's lease; the leader is the key with the
lowest create revision, and each candidate waits for the deletion of its
predecessor — the protocol of Go's ``concurrency.Election`` and
``etcdctl elect``, so they take part in the same elections. The fencing token
is the key's create revision.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

from ..._election import BaseElection, BaseFactory, Renewal
from ...errors import ConfigurationError, MechanismUnavailableError
from ._batch import TxnBatcher
from ._client import EtcdClient, EtcdError, KeyValue, b64, kvs_of, range_request

__all__ = ["EtcdElection", "EtcdFactory"]


@dataclass
class _Candidacy:
    key: str
    create_revision: int
    lease_id: int


class _ResourceView:
    """What the factory's watch knows of one resource's candidacy keys."""

    def __init__(self) -> None:
        self.keys: dict[str, KeyValue] = {}
        self.changed = trio.Event()

    @property
    def leader(self) -> str | None:
        if not self.keys:
            return None
        return min(self.keys.values(), key=lambda kv: kv.create_revision).value

    def notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()


class EtcdElection(BaseElection["EtcdFactory"]):
    """The election of one resource on etcd."""

    def __init__(self, factory: EtcdFactory, resource_id: str) -> None:
        super().__init__(factory, resource_id)
        self._candidacy: _Candidacy | None = None

    @property
    def election_prefix(self) -> str:
        """``<PREFIX>/<resource>`` — the name ``etcdctl elect`` uses."""
        return f"{self._factory.prefix}/{self.resource_id}"

    async def _campaign(self) -> tuple[int, float]:
        while True:
            candidacy = await self._stand()
            # Taken before looking, so a deletion seen after the look still wakes us.
            changed = self._factory._view(self.resource_id).changed
            # One read for both questions: is anyone queued before us (Go's
            # waitDeletes), and do our key and lease still exist? etcd's
            # Campaign skips the second; m3 had to patch it in.
            responses, _ = await self._factory.batcher.submit(
                [
                    {
                        "request_range": range_request(
                            self.election_prefix + "/",
                            max_create_revision=candidacy.create_revision - 1,
                            sort_order="DESCEND",
                            sort_target="CREATE",
                            limit=1,
                            keys_only=True,
                        )
                    },
                    {"request_range": {"key": b64(candidacy.key)}},
                ]
            )
            predecessors, ours = (kvs_of(response) for response in responses)
            if predecessors:
                # The watch wakes us; the timeout covers a watch that is reconnecting.
                with trio.move_on_after(self._factory.renew_interval):
                    await changed.wait()
                if self._first_in_view(candidacy):
                    break
                continue
            if not ours or ours[0].create_revision != candidacy.create_revision:
                self._candidacy = None
                continue
            break
        return candidacy.create_revision, self._factory.lease_deadline

    def _first_in_view(self, candidacy: _Candidacy) -> bool:
        """Whether the watch's mirror shows our key, alive, first in the queue.

        The mirror is the prefix as of the last watch event, so this is the
        same re-check as a read at that revision, without the round trip: the
        fast path of a handover.
        """
        view = self._factory._view(self.resource_id)
        if not view.keys:
            return False
        first = min(view.keys.values(), key=lambda kv: kv.create_revision)
        return first.key == candidacy.key and first.create_revision == candidacy.create_revision

    async def _stand(self) -> _Candidacy:
        """Put our key on the factory's lease, or find the one we put before."""
        factory = self._factory
        lease_id = await factory._current_lease()
        if self._candidacy is not None and self._candidacy.lease_id == lease_id:
            return self._candidacy
        key = f"{self.election_prefix}/{lease_id:x}"
        # The key carries our lease's id, so nobody else writes it: a plain put
        # (batched with other campaigns') is safe; its create revision is the
        # put's revision, or the earlier one if the key was already there.
        put = {"key": b64(key), "value": b64(self.instance_id), "lease": str(lease_id)}
        (response,), revision = await factory.batcher.submit(
            [{"request_put": {**put, "prev_kv": True}}]
        )
        previous = response.get("response_put", {}).get("prev_kv")
        if previous is not None:
            revision = int(previous["create_revision"])
        self._candidacy = _Candidacy(key, revision, lease_id)
        factory._candidacies[key] = self
        return self._candidacy

    async def _release(self) -> None:
        candidacy = self._candidacy
        if candidacy is None:
            return
        # Delete only our own key of that term (guarded by its create revision).
        await self._factory.client.txn(
            compare=[
                {
                    "key": b64(candidacy.key),
                    "target": "CREATE",
                    "create_revision": str(candidacy.create_revision),
                }
            ],
            success=[{"request_delete_range": {"key": b64(candidacy.key)}}],
            failure=[],
        )
        self._forget_candidacy()

    def _forget_candidacy(self) -> None:
        if self._candidacy is not None:
            self._factory._candidacies.pop(self._candidacy.key, None)
        self._candidacy = None

    async def leader(self) -> str | None:
        self._check_open()
        kvs, _ = await self._factory.client.range_prefix(
            self.election_prefix + "/", sort_order="ASCEND", sort_target="CREATE", limit=1
        )
        return kvs[0].value if kvs else None

    @asynccontextmanager
    async def _leader_changes(self) -> AsyncIterator[AsyncIterator[str | None]]:
        yield self._follow_leader()

    async def _follow_leader(self) -> AsyncIterator[str | None]:
        view = self._factory._view(self.resource_id)
        while True:
            yield view.leader
            await view.changed.wait()
            view = self._factory._view(self.resource_id)

    def fencing_guard(self) -> dict[str, str] | None:
        """An etcd compare that holds only while the current term lasts.

        It says "our candidacy key still has this term's create revision" (the
        fencing token). Keep it with the work it guards and add it to every
        transaction the work makes: once another instance won, the key is gone
        and the transaction fails, however late the deposed master sends it.
        ``None`` when not master.
        """
        candidacy = self._candidacy
        token = self.fencing_token
        if candidacy is None or token is None:
            return None
        return {"key": b64(candidacy.key), "target": "CREATE", "create_revision": str(token)}

    async def guarded_txn(
        self, compare: list[dict[str, object]], success: list[dict[str, object]]
    ) -> bool:
        """Run an etcd transaction that commits only while this term lasts.

        Like PD's ``LeaderTxn``: ``compare`` is extended with
        :meth:`fencing_guard`. Operations are etcd gateway JSON
        (``{"request_put": {"key": <base64>, "value": <base64>}}``). Returns
        whether the transaction committed; False at once when not master.
        """
        self._check_open()
        guard = self.fencing_guard()
        if guard is None:
            return False
        answer = await self._factory.client.txn([guard, *compare], success, [])
        return bool(answer.get("succeeded"))

    async def put_if_master(self, key: str, value: str) -> bool:
        """Put ``key`` = ``value`` only if this instance still holds this term."""
        put: dict[str, object] = {"request_put": {"key": b64(key), "value": b64(value)}}
        return await self.guarded_txn([], [put])


class EtcdFactory(BaseFactory[EtcdElection]):
    """One instance on etcd: a lease shared by its elections and one watch."""

    def __init__(
        self,
        client: EtcdClient,
        *,
        prefix: str,
        instance_id: str,
        ttl: float,
        close_timeout: float,
    ) -> None:
        super().__init__(instance_id=instance_id, ttl=ttl, close_timeout=close_timeout)
        self.client = client
        self.batcher = TxnBatcher(client)
        self.prefix = prefix
        self.lease_id: int | None = None
        self._views: dict[str, _ResourceView] = {}
        self._candidacies: dict[str, EtcdElection] = {}
        self._synced = trio.Event()

    def _create_election(self, resource_id: str) -> EtcdElection:
        return EtcdElection(self, resource_id)

    def _view(self, resource_id: str) -> _ResourceView:
        view = self._views.get(resource_id)
        if view is None:
            view = self._views[resource_id] = _ResourceView()
        return view

    # -- the lease ------------------------------------------------------------

    async def _grant(self) -> int:
        granted_at = trio.current_time()
        lease_id, granted_ttl = await self.client.lease_grant(math.ceil(self.ttl))
        if granted_ttl > math.ceil(self.ttl):
            await self.client.lease_revoke(lease_id)
            raise ConfigurationError(
                f"etcd {self.client.endpoint} grants leases of at least {granted_ttl} s; "
                f"ttl={self.ttl:g} is too short"
            )
        self.lease_id = lease_id
        self.lease_deadline = granted_at + self.ttl - self.margin
        return lease_id

    async def _current_lease(self) -> int:
        if self.lease_id is None:
            return await self._grant()
        return self.lease_id

    async def _open(self) -> None:
        await self._grant()
        self.nursery.start_soon(self.batcher.run)
        await self.nursery.start(self._watch_forever)

    async def _renew(self, held: list[EtcdElection]) -> Renewal[EtcdElection]:
        lease_id = await self._current_lease()
        if await self.client.lease_keep_alive(lease_id) <= 0:
            # The lease expired (an outage longer than the TTL): every key on it
            # is gone. Start a new lease so elections can campaign again.
            self.lease_id = None
            for election in list(self._candidacies.values()):
                election._forget_candidacy()
            await self._grant()
            return Renewal(refused=frozenset(held))
        return Renewal(
            refused=frozenset(
                e for e in held if e._candidacy is None or e._candidacy.lease_id != lease_id
            )
        )

    async def _close_session(self) -> None:
        try:
            if self.lease_id is not None:
                await self.client.lease_revoke(self.lease_id)
        except (MechanismUnavailableError, EtcdError):
            pass  # the lease expires by itself
        finally:
            self.lease_id = None  # the client is closed by open_factory, last

    # -- the watch ------------------------------------------------------------

    async def _watch_forever(self, task_status: trio.TaskStatus[None]) -> None:
        """Mirror every candidacy key under the prefix; re-sync after failures."""
        started = False
        while True:
            try:
                revision = await self._sync()
                if not started:
                    task_status.started()
                    started = True
                async with self.client.watch_prefix(self.prefix + "/", revision + 1) as results:
                    async for result in results:
                        self._apply(result.get("events", []))
            except (MechanismUnavailableError, EtcdError):
                if not started:
                    raise
            await trio.sleep(self.retry_interval)

    async def _sync(self) -> int:
        kvs, revision = await self.client.range_prefix(self.prefix + "/")
        fresh: dict[str, dict[str, KeyValue]] = {}
        for kv in kvs:
            resource_id = self._resource_of(kv.key)
            if resource_id is not None:
                fresh.setdefault(resource_id, {})[kv.key] = kv
        for resource_id in set(self._views) | set(fresh):
            view = self._view(resource_id)
            view.keys = fresh.get(resource_id, {})
            view.notify()
        # A candidacy whose key vanished while we were not watching is over.
        present = {kv.key for kv in kvs}
        for key, election in list(self._candidacies.items()):
            if key not in present:
                self._candidacy_deleted(election)
        return revision

    def _apply(self, events: list[dict[str, object]]) -> None:
        touched: set[str] = set()
        for event in events:
            kv = KeyValue.from_json(event["kv"])  # type: ignore[arg-type]
            resource_id = self._resource_of(kv.key)
            if resource_id is None:
                continue
            view = self._view(resource_id)
            if event.get("type") == "DELETE":
                view.keys.pop(kv.key, None)
                election = self._candidacies.get(kv.key)
                if election is not None:
                    self._candidacy_deleted(election)
            else:
                view.keys[kv.key] = kv
            touched.add(resource_id)
        for resource_id in touched:
            self._view(resource_id).notify()

    def _candidacy_deleted(self, election: EtcdElection) -> None:
        """Our key was deleted (resign, revoke, or someone else): the term is over."""
        election._forget_candidacy()
        election._lost()

    def _resource_of(self, key: str) -> str | None:
        head = self.prefix + "/"
        if not key.startswith(head):
            return None
        resource_id, sep, _ = key[len(head) :].partition("/")
        return resource_id if sep else None
