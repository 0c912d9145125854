"""Elections on etcd, laid out like etcd's own ``concurrency.Election``.

One lease per factory, kept alive by the core's renewal loop, and one prefix
watch per factory feeding every election: the cost at rest does not grow with
the number of resources. A candidate puts ``<PREFIX>/<resource>/<lease hex>``
(value: its instance id) on the factory's lease; the leader is the key with the
lowest create revision, and each candidate waits for the deletion of its
predecessor — the protocol of Go's ``concurrency.Election`` and
``etcdctl elect``, so they take part in the same elections. The fencing token
is the key's create revision.

Membership: a factory that joins (its first campaign or membership query) puts
a presence key ``<PREFIX>/member:<instance id>`` (value: its instance id) on the
same lease. It has two segments under the prefix, so it lies outside every
resource's range ``<PREFIX>/<resource>/`` (resource and instance ids cannot
contain ``/``); a resource named ``member:x`` has its keys *below*
``<PREFIX>/member:x/``, which the members' read filters out. The keepalive that
keeps the candidacies alive keeps the presence key alive: membership costs no
writes at rest. The key goes when the lease is revoked (close) or expires
(crash); a renewal verifies it is still on the lease like the candidacy keys
and puts it again (on a new lease, if the old one was lost) at once.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from ..._election import BaseElection, BaseFactory, Renewal, single_exception
from ...errors import ConfigurationError, ElectionClosedError, MechanismUnavailableError
from ._batch import TxnBatcher
from ._client import EtcdClient, EtcdError, KeyValue, b64, kvs_of, range_request

__all__ = ["EtcdElection", "EtcdFactory"]

log = logging.getLogger("election2.etcd")

#: etcd's default limit of operations per transaction (``--max-txn-ops``).
MAX_TXN_OPS = 128

#: Presence keys are ``<PREFIX>/<MEMBER_MARKER><instance id>``.
MEMBER_MARKER = "member:"


def _lease_not_found(error: EtcdError) -> bool:
    return "lease not found" in str(error)


def _first_of(response: dict[str, object]) -> KeyValue | None:
    kvs = kvs_of(response)
    return kvs[0] if kvs else None


def _same_key(kv: KeyValue, candidacy: _Candidacy) -> bool:
    return kv.key == candidacy.key and kv.create_revision == candidacy.create_revision


@dataclass(slots=True)
class _Candidacy:
    """Our key for one campaign: identified by name AND create revision, since
    a later campaign on the same lease reuses the name."""

    key: str
    #: 0 while the put is in flight (the key may or may not exist yet).
    create_revision: int
    lease_id: int
    #: The key as the gateway spells it (base64), to find it among the
    #: lease's keys at every renewal without decoding thousands of them.
    encoded_key: str = field(init=False)

    def __post_init__(self) -> None:
        self.encoded_key = b64(self.key)

    def deleted_by(self, revision: int) -> bool:
        """Whether a deletion at ``revision`` removed this candidacy's key
        (not an earlier key of the same name)."""
        return 0 < self.create_revision < revision


@dataclass(slots=True)
class _Presence:
    """Our presence key: on which lease we put it, and its create revision
    (0 while a put is in flight, or once a renewal found it gone)."""

    key: str
    lease_id: int = 0
    create_revision: int = 0


class _ResourceView:
    """What the factory's watch knows of one resource's candidacy keys."""

    __slots__ = ("_changed", "keys")

    def __init__(self) -> None:
        self.keys: dict[str, KeyValue] = {}
        self._changed: trio.Event | None = None

    @property
    def changed(self) -> trio.Event:
        """Set at the next change (made when first asked for: most resources
        have nobody waiting or observing)."""
        if self._changed is None:
            self._changed = trio.Event()
        return self._changed

    @property
    def leader(self) -> str | None:
        if not self.keys:
            return None
        return min(self.keys.values(), key=lambda kv: kv.create_revision).value

    def notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None


class EtcdElection(BaseElection["EtcdFactory"]):
    """The election of one resource on etcd."""

    __slots__ = ("_candidacy",)

    def __init__(self, factory: EtcdFactory, resource_id: str) -> None:
        super().__init__(factory, resource_id)
        self._candidacy: _Candidacy | None = None

    @property
    def election_prefix(self) -> str:
        """``<PREFIX>/<resource>`` — the name ``etcdctl elect`` uses."""
        return f"{self._factory.prefix}/{self.resource_id}"

    async def _campaign(self) -> tuple[int, float]:
        while True:
            # Taken before looking, so a deletion seen after the look still wakes us.
            changed = self._factory._view(self.resource_id).changed
            candidacy, first = await self._stand()
            if first is not None and _same_key(first, candidacy):
                break  # ours is the oldest key: master
            if first is None or first.create_revision > candidacy.create_revision:
                self._forget_candidacy()  # our key is gone: stand again
                continue
            # Someone is queued before us (Go's waitDeletes). The watch wakes
            # us; the timeout covers a watch that is reconnecting.
            with trio.move_on_after(self._factory.renew_interval), self._factory._watching():
                await changed.wait()
            if self._first_in_view(candidacy):
                break
        return candidacy.create_revision, self._factory.lease_deadline

    def _first_in_view(self, candidacy: _Candidacy) -> bool:
        """Whether the watch's mirror shows our key, alive, first in the queue.

        The mirror is the prefix as of the last watch event, so this is the
        same re-check as a read at that revision, without the round trip: the
        fast path of a handover.
        """
        view = self._factory._view(self.resource_id)
        if not view.keys or candidacy.lease_id != self._factory.lease_id:
            return False
        first = min(view.keys.values(), key=lambda kv: kv.create_revision)
        return first.key == candidacy.key and first.create_revision == candidacy.create_revision

    async def _stand(self) -> tuple[_Candidacy, KeyValue | None]:
        """Put our key on the factory's lease (or find the one we put before)
        and, in the same transaction, read the oldest key of the election:
        one round trip tells an uncontended candidate that it won."""
        factory = self._factory
        # The oldest key under the election, read after our put: ours if we lead.
        first = {
            "request_range": range_request(
                self.election_prefix + "/",
                sort_order="ASCEND",
                sort_target="CREATE",
                limit=1,
                keys_only=True,
            )
        }
        while True:
            lease_id = await factory._current_lease()
            candidacy = self._candidacy
            if (
                candidacy is not None
                and candidacy.lease_id == lease_id
                and candidacy.create_revision
            ):
                (response,), _ = await factory.batcher.submit([first])
                return candidacy, _first_of(response)
            key = f"{self.election_prefix}/{lease_id:x}"
            if self._candidacy is not None and self._candidacy.key != key:
                self._forget_candidacy()  # on a lease that is gone, with its key
            # Recorded before the put: if its answer is lost, the key may exist
            # all the same, and a release must still delete it (by name).
            self._candidacy = _Candidacy(key, 0, lease_id)
            factory._candidacies[key] = self
            # The key carries our lease's id, so nobody else writes it: a plain put
            # (batched with other campaigns') is safe; its create revision is the
            # put's revision, or the earlier one if the key was already there.
            put = {"key": b64(key), "value": b64(self.instance_id), "lease": str(lease_id)}
            try:
                (response, oldest), revision = await factory.batcher.submit(
                    [{"request_put": {**put, "prev_kv": True}}, first]
                )
            except EtcdError as exc:
                if not _lease_not_found(exc):
                    raise
                # The lease expired in an outage the renewals have not noticed
                # yet: every key on it is gone. Take a new lease and stand again.
                factory._lease_lost(lease_id)
                continue
            previous = response.get("response_put", {}).get("prev_kv")
            if previous is not None:
                revision = int(previous["create_revision"])
            self._candidacy = _Candidacy(key, revision, lease_id)
            return self._candidacy, _first_of(oldest)

    async def _release(self) -> None:
        candidacy = self._candidacy
        if candidacy is None:
            return
        # By name: the key carries our lease id, so it is ours whatever its
        # revision (a put whose answer was lost has none on record).
        await self._factory.client.delete(candidacy.key)
        if self._candidacy is candidacy:
            self._forget_candidacy()

    def _forget_candidacy(self) -> None:
        if self._candidacy is not None:
            self._factory._candidacies.pop(self._candidacy.key, None)
        self._candidacy = None

    async def _read_leader(self) -> str | None:
        kvs, _ = await self._factory.client.range_prefix(
            self.election_prefix + "/", sort_order="ASCEND", sort_target="CREATE", limit=1
        )
        return kvs[0].value if kvs else None

    @asynccontextmanager
    async def _leader_changes(self) -> AsyncIterator[AsyncIterator[str | None]]:
        yield self._follow_leader()

    async def _follow_leader(self) -> AsyncIterator[str | None]:
        with self._factory._watching():
            while True:
                view = self._factory._view(self.resource_id)
                # Taken before yielding: a change while the consumer is busy still
                # wakes the next wait (coalesced, never missed).
                changed = view.changed
                yield view.leader
                await changed.wait()

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
    """One instance on etcd: a lease shared by its elections and one watch.

    The watch keeps a mirror of every key under the prefix; elections wait and
    observe through it. Safety does not depend on it: each renewal verifies that
    the held keys are still attached to the lease, and checks the mirror against the server (a
    count of the keys, and of those changed since the watch's last event), so
    a watch whose connection went silent is re-established and re-synced
    within two renewal intervals of the first change it missed.
    """

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
        self.batcher = TxnBatcher(client, max_ops=MAX_TXN_OPS)
        self.prefix = prefix
        self.lease_id: int | None = None
        self._lease_lock = trio.Lock()
        self._views: dict[str, _ResourceView] = {}
        self._candidacies: dict[str, EtcdElection] = {}
        # The mirror: keys under the prefix outside any resource (counted
        # only), how many keys it holds, and the revision it is complete up to.
        self._other_keys: dict[str, KeyValue] = {}
        self._mirrored = 0
        self._watched_revision = 0
        #: The watch's revision when a renewal first found the mirror behind.
        self._lagging_at: int | None = None
        #: Observers and waiting campaigns: while there are any, renewals
        #: check that the watch is not silent.
        self._watchers = 0
        self._watch_connection = trio.CancelScope()
        #: Set once the factory joined: renewals keep the key there from then on.
        self._presence: _Presence | None = None
        self._presence_lock = trio.Lock()
        #: The store revision of our latest presence put: an observer of the
        #: members waits for the mirror to reach it (it sees itself).
        self._presence_revision = 0
        self._members_changed = trio.Event()

    def _create_election(self, resource_id: str) -> EtcdElection:
        return EtcdElection(self, resource_id)

    @contextlib.contextmanager
    def _watching(self) -> Iterator[None]:
        """Count a task that relies on the watch for as long as it does."""
        self._watchers += 1
        try:
            yield
        finally:
            self._watchers -= 1

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
        """The factory's lease; granted first if there is none (one grant for
        all the campaigns that find it missing at once)."""
        async with self._lease_lock:
            if self._closed:  # a lease granted now would outlive the factory
                raise ElectionClosedError(f"factory {self.instance_id!r} is closed")
            if self.lease_id is None:
                return await self._grant()
            return self.lease_id

    def _lease_lost(self, lease_id: int) -> None:
        """etcd no longer has ``lease_id``: every key on it is gone, and so is
        every term and candidacy on it. The next campaign takes a new lease;
        so does the next renewal of a factory that joined (its presence key
        must come back)."""
        if self.lease_id != lease_id:
            return  # already replaced
        self.lease_id = None
        for election in list(self._candidacies.values()):
            if election._candidacy is not None and election._candidacy.lease_id == lease_id:
                self._candidacy_deleted(election, "the lease expired")

    async def _open(self) -> None:
        # No lease yet: the first campaign takes one, so a factory that only
        # reads (``election2 leader``) writes nothing.
        self.nursery.start_soon(self.batcher.run)
        await self.nursery.start(self._watch_forever)

    async def _renew(self, held: list[EtcdElection]) -> Renewal[EtcdElection]:
        lease_id = self.lease_id
        if lease_id is None:  # nothing campaigned since the lease was lost, if ever
            if self._presence is not None:
                await self._put_presence(self._presence)  # a member takes a new lease at once
            await self._verify([], None)  # the watch's health, for observers
            return Renewal(refused=frozenset(held))
        ttl_left = 0
        gone: set[EtcdElection] = set()

        async def keep_alive() -> None:
            nonlocal ttl_left
            ttl_left = await self.client.lease_keep_alive(lease_id)

        async def verify() -> None:
            gone.update(await self._verify(held, lease_id))

        with single_exception():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(keep_alive)
                nursery.start_soon(verify)
        if ttl_left <= 0:
            # The lease expired (an outage longer than the TTL): the next
            # campaign takes a new one, and a member takes one now, to put its
            # presence key again (a failure here is retried soon, like any
            # failed renewal; the terms on the old lease are over already).
            self._lease_lost(lease_id)
            if self._presence is not None:
                await self._put_presence(self._presence)
            return Renewal(refused=frozenset(held))
        presence = self._presence
        if presence is not None and (presence.lease_id != lease_id or not presence.create_revision):
            # Deleted behind our back, or a campaign replaced the lease. The
            # lease is alive, so the terms are confirmed whatever this does.
            try:
                await self._put_presence(presence)
            except (MechanismUnavailableError, EtcdError) as exc:
                log.warning(
                    "%s: could not put the presence key back, retrying: %s",
                    self.instance_id,
                    exc,
                )
        return Renewal(
            refused=frozenset(
                e
                for e in held
                if e in gone or e._candidacy is None or e._candidacy.lease_id != lease_id
            )
        )

    async def _verify(self, held: list[EtcdElection], lease_id: int | None) -> set[EtcdElection]:
        """The held terms whose key is no longer attached to ``lease_id``
        (deleted by anyone, or the lease is gone), from ONE read of the keys
        on the lease, however many terms there are; marks our presence key
        for a put if it is gone; and checks the watch's mirror while someone
        relies on the watch.

        Only this factory puts keys on its lease (the lease id is in every
        key's name), so a key still attached is the one the term began with.
        """
        gone: set[EtcdElection] = set()

        async def check_keys(lease_id: int) -> None:
            attached = await self.client.lease_keys(lease_id)
            for election in held:
                candidacy = election._candidacy
                if (
                    candidacy is not None
                    and candidacy.create_revision
                    and (attached is None or candidacy.encoded_key not in attached)
                ):
                    gone.add(election)
            presence = self._presence
            if (
                presence is not None
                and presence.create_revision
                and presence.lease_id == lease_id
                and (attached is None or b64(presence.key) not in attached)
            ):
                presence.create_revision = 0

        with single_exception():
            async with trio.open_nursery() as nursery:
                if lease_id is not None:
                    nursery.start_soon(check_keys, lease_id)
                if self._watchers:
                    nursery.start_soon(self._check_mirror)
        if not self._watchers:
            self._lagging_at = None
        return gone

    async def _check_mirror(self) -> None:
        """Is the watch's mirror complete? Same key count, and no key put
        since the watch's last event. (etcd's count ignores revision filters,
        hence a one-key read; it scans the prefix, so only when someone relies
        on the watch: an observer or a waiting campaign.)"""
        watched, mirrored = self._watched_revision, self._mirrored
        answer = await self.client.txn(
            [],
            [
                {"request_range": range_request(self.prefix + "/", count_only=True)},
                {
                    "request_range": range_request(
                        self.prefix + "/", keys_only=True, min_mod_revision=watched + 1, limit=1
                    )
                },
            ],
            [],
        )
        total, newer = (response.get("response_range", {}) for response in answer["responses"])
        behind = int(total.get("count", 0)) != mirrored or bool(newer.get("kvs"))
        self._check_watch(watched, behind=behind)

    def _check_watch(self, watched: int, *, behind: bool) -> None:
        """Re-establish a watch that, for a whole renewal interval, has not
        delivered a change the server has (its connection went silent)."""
        if not behind:
            self._lagging_at = None
        elif self._lagging_at is not None and self._watched_revision == self._lagging_at:
            log.warning(
                "%s: the watch on %r missed changes for %.1f s; re-syncing",
                self.instance_id,
                self.prefix,
                self.renew_interval,
            )
            self._lagging_at = None
            self._watch_connection.cancel()
        else:
            self._lagging_at = watched

    async def _release_all(self, elections: list[EtcdElection]) -> None:
        """Nothing to do: revoking the lease (:meth:`_close_session`) deletes
        every key on it in one request, and a key on an older lease went with it."""

    async def _close_session(self) -> None:
        # After a grant in flight (the factory is closed: no grant follows),
        # so that revoking takes the presence key with it.
        async with self._lease_lock:
            try:
                if self.lease_id is not None:
                    await self.client.lease_revoke(self.lease_id)
            except (MechanismUnavailableError, EtcdError):
                pass  # the lease expires by itself
            finally:
                self.lease_id = None  # the client is closed by open_factory, last

    # -- membership -------------------------------------------------------------

    @property
    def members_prefix(self) -> str:
        """``<PREFIX>/member:`` — the start of every presence key."""
        return f"{self.prefix}/{MEMBER_MARKER}"

    def _is_presence_key(self, key: str) -> bool:
        """A presence key: two segments under the prefix (a resource named
        ``member:x`` has its candidacy keys under ``<PREFIX>/member:x/``)."""
        head = self.members_prefix
        return key.startswith(head) and len(key) > len(head) and "/" not in key[len(head) :]

    async def _register_presence(self) -> None:
        presence = _Presence(self.members_prefix + self.instance_id)
        await self._put_presence(presence)
        # Kept there by the renewals from now on. (Not after a failed join: the
        # core asks again. A key whose put answer was lost is on our lease and
        # goes with it; the next join puts it again.)
        self._presence = presence

    async def _put_presence(self, presence: _Presence) -> None:
        """Put our presence key on the current lease (taking one if there is
        none), unless it is there already."""
        async with self._presence_lock:
            while True:
                lease_id = await self._current_lease()
                if presence.lease_id == lease_id and presence.create_revision:
                    return
                presence.lease_id, presence.create_revision = lease_id, 0
                put = {
                    "key": b64(presence.key),
                    "value": b64(self.instance_id),
                    "lease": str(lease_id),
                    "prev_kv": True,
                }
                # Not batched: cancellable, so a renewal keeps to its time
                # limit (a put cut short is simply made again).
                try:
                    answer = await self.client.txn([], [{"request_put": put}], [])
                except EtcdError as exc:
                    if not _lease_not_found(exc):
                        raise
                    self._lease_lost(lease_id)  # expired unnoticed: take a new one
                    continue
                revision = int(answer["header"]["revision"])
                (response,) = answer.get("responses", [{}])
                previous = response.get("response_put", {}).get("prev_kv")
                presence.create_revision = (
                    int(previous["create_revision"]) if previous is not None else revision
                )
                self._presence_revision = max(self._presence_revision, revision)
                return

    async def _read_members(self) -> frozenset[str]:
        kvs, _ = await self.client.range_prefix(self.members_prefix)
        return frozenset(kv.value for kv in kvs if self._is_presence_key(kv.key))

    def _mirrored_members(self) -> frozenset[str]:
        return frozenset(
            kv.value for key, kv in self._other_keys.items() if self._is_presence_key(key)
        )

    @asynccontextmanager
    async def _member_changes(self) -> AsyncIterator[AsyncIterator[frozenset[str]]]:
        yield self._follow_members()

    async def _follow_members(self) -> AsyncIterator[frozenset[str]]:
        with self._watching():
            while True:
                # Taken before yielding: a change while the consumer is busy
                # still wakes the next wait (coalesced, never missed).
                changed = self._members_changed
                # Not before the mirror shows our own latest presence put.
                if self._watched_revision >= self._presence_revision:
                    yield self._mirrored_members()
                await changed.wait()

    def _notify_members(self) -> None:
        self._members_changed.set()
        self._members_changed = trio.Event()

    # -- the watch ------------------------------------------------------------

    async def _watch_forever(self, task_status: trio.TaskStatus[None]) -> None:
        """Mirror every key under the prefix; re-sync after failures or when a
        renewal found the watch silent."""
        revision = await self._sync()
        task_status.started()
        while True:
            with trio.CancelScope() as self._watch_connection:
                with contextlib.suppress(MechanismUnavailableError, EtcdError):
                    async with self.client.watch_prefix(self.prefix + "/", revision + 1) as results:
                        async for result in results:
                            self._apply(result.get("events", []))
            if not self._watch_connection.cancelled_caught:
                await trio.sleep(self.retry_interval)  # not a tight loop while unreachable
            revision = await self._resync()

    async def _resync(self) -> int:
        while True:
            try:
                return await self._sync()
            except (MechanismUnavailableError, EtcdError):
                await trio.sleep(self.retry_interval)

    async def _sync(self) -> int:
        """Rebuild the mirror from one read of the prefix; its revision."""
        kvs, revision = await self.client.range_prefix(self.prefix + "/")
        fresh: dict[str, dict[str, KeyValue]] = {}
        self._other_keys = {}
        for kv in kvs:
            resource_id = self._resource_of(kv.key)
            if resource_id is None:
                self._other_keys[kv.key] = kv
            else:
                fresh.setdefault(resource_id, {})[kv.key] = kv
        self._mirrored = len(kvs)
        self._watched_revision = revision
        self._lagging_at = None
        for resource_id in set(self._views) | set(fresh):
            view = self._view(resource_id)
            view.keys = fresh.get(resource_id, {})
            view.notify()
        self._notify_members()
        # A candidacy whose key vanished while we were not watching is over;
        # one put after the read was answered is not.
        present = {kv.key: kv.create_revision for kv in kvs}
        for key, election in list(self._candidacies.items()):
            candidacy = election._candidacy
            if (
                candidacy is not None
                and present.get(key) != candidacy.create_revision
                and candidacy.deleted_by(revision + 1)
            ):
                self._candidacy_deleted(election)
        return revision

    def _apply(self, events: list[dict[str, object]]) -> None:
        touched: set[str] = set()
        members_touched = False
        for event in events:
            kv = KeyValue.from_json(event["kv"])  # type: ignore[arg-type]
            self._watched_revision = max(self._watched_revision, kv.mod_revision)
            resource_id = self._resource_of(kv.key)
            keys = self._other_keys if resource_id is None else self._view(resource_id).keys
            if event.get("type") == "DELETE":
                if keys.pop(kv.key, None) is not None:
                    self._mirrored -= 1
                election = self._candidacies.get(kv.key)
                candidacy = election._candidacy if election is not None else None
                # A late event about an earlier key of the same name is ignored.
                if election is not None and candidacy and candidacy.deleted_by(kv.mod_revision):
                    self._candidacy_deleted(election)
            else:
                if kv.key not in keys:
                    self._mirrored += 1
                keys[kv.key] = kv
            if resource_id is not None:
                touched.add(resource_id)
            elif self._is_presence_key(kv.key):
                members_touched = True
        for resource_id in touched:
            self._view(resource_id).notify()
        if members_touched:
            self._notify_members()

    def _candidacy_deleted(self, election: EtcdElection, reason: str = "key deleted") -> None:
        """Our key was deleted (resign, revoke, or someone else): the term is over."""
        election._forget_candidacy()
        election._lost(reason)

    def _resource_of(self, key: str) -> str | None:
        head = self.prefix + "/"
        if not key.startswith(head):
            return None
        resource_id, sep, _ = key[len(head) :].partition("/")
        return resource_id if sep else None
