"""Elections by Redlock over N independent Redis masters.

A term is a lock held on a quorum (N//2+1) of nodes. Acquire sends ``SET NX
PX`` to every node at once and counts the term only if a quorum said yes
*and* the round finished inside the validity window; the deadline is the
round's start + ttl - drift, drift = ttl*1% + 2 ms. The core's renewal loop
extends every key the factory holds with ONE script call per node per tick;
a node that lacked a key at a renewal that confirmed its term on a quorum
gets it back at the next one, so one node after another may fail for longer
than the ttl without ending the term. Resign deletes the lock
(compare-and-delete) and publishes on the prefix's channel, so waiting
candidates retry at once instead of at their next poll; a lost acquire round
is undone without a notice, and the loser retries after a jittered backoff.
Fencing tokens come from a per-resource counter bumped on each node that
granted the lock and raised to the term's token on a quorum (and on every
node where a renewal sets the key again).

Campaigns that run together share their calls: acquire rounds submitted
while another is in flight go out together as one script call per node (and
so do deletions: resigns, withdrawn campaigns, undos), see
:class:`~._redlock.Batcher`; each round is still counted per key against the
quorum, and its validity window runs from the moment its call was sent. A
renewal encodes its keys and values once for every node and reuses them
while the held terms do not change.

Membership. A factory's presence is an entry in the prefix's sorted set
``<prefix>//members`` on every node: member = instance id, score = expiry in
ms on that node's clock (its ``TIME``, read inside the script; the same clock
its PX expiry runs on), never compared across nodes. The set is outside the
resource namespace: no key of the default template ``{prefix}/{resource}``
(or its ``:fencing`` counter) contains ``//``, whatever the prefix, since a
prefix has no empty segment and a resource id no ``/``; a custom
``key_template`` that could produce the set's name is refused with
``ConfigurationError`` (checked for the factory's own prefix). An instance
is a member when a quorum of nodes lists it unexpired.

* Join (first campaign or membership query): the entry is added on every
  node and must land on a quorum (else ``MechanismUnavailableError``), and
  ``joined:<id>`` is published on the prefix's channel, so observers update
  at once. A factory that only reads leaders never joins and writes nothing.
* The existing renewal, still one ``EXTEND`` call per node per tick (every
  ttl/3; ttl/10 after a failure), also drops expired entries, sets our
  expiry to the node's now + ttl (adding the entry again where it is
  missing: ``joined`` is published then), makes the set expire with its
  newest entry (nothing is left once every member is gone) and answers with
  the node's time and the live entries with their expiries.
* Close removes the entry everywhere (after the joins or renewals still on
  their way, which could add it back) and publishes ``left:<id>``: a clean
  leave is seen at once. A crashed or cut-off member's entries expire a ttl
  after its last renewal reached each node.
* ``members()`` is a read: a script that lists the entries whose score is
  above the node's ``TIME``; an id listed by a quorum is a member.
* Observers read again when a notice comes, and when the member set that
  the factory's own renewals last saw changes: at a renewal's answer, or at
  the moment the quorum-th listed expiry passes, moved to the local clock
  from the answer's arrival (so never before the node's own expiry). A
  crashed member thus leaves the observed set within a ttl of its last
  renewal plus one read, and at rest observing costs no command beyond the
  renewals (the pub/sub listeners' own keepalive ``PING`` apart).
* One instance id open twice on the same prefix shares one entry: when one
  closes, the other's next renewal puts it back.
"""

from __future__ import annotations

import math
import random
import re
import secrets
import string
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any

import trio

from ..._checks import MAX_RESOURCE_ID_LENGTH
from ..._election import BaseElection, BaseFactory, Renewal
from ...errors import ConfigurationError, ElectionClosedError, MechanismUnavailableError
from ._redlock import (
    ACQUIRE_MANY,
    EXTEND,
    FENCE,
    JOIN,
    LEAVE,
    MEMBERS,
    RELEASE_MANY,
    Batcher,
    NodeFailure,
    RedisNode,
    failures,
    fan_out,
    unavailable,
)
from ._resp import Arg, Raw, RedisError, bulk_strings

__all__ = ["RedisElection", "RedisFactory"]

#: Keys per script call when a factory releases everything at close: large
#: enough that 10,000 keys take a few calls, small enough that no call blocks
#: a node for long.
RELEASE_BATCH = 1000


def _pending(result: object) -> bool:
    return isinstance(result, NodeFailure) and result.reason == "no answer yet"


#: What a resource id can be (see ``check_resource_id``), as a pattern.
_RESOURCE_ID = rf"[^/\x00-\x1f\x7f-\x9f]{{1,{MAX_RESOURCE_ID_LENGTH}}}"


def members_key_of(prefix: str) -> str:
    """The prefix's members set: ``<prefix>//members``.

    A prefix has no empty segment and a resource id no ``/``, so no key of
    the default template ``{prefix}/{resource}`` (nor its ``:fencing``
    counter) contains ``//``: the set cannot be any resource's key, whatever
    the prefix (nested prefixes included).
    """
    return f"{prefix}//members"


def check_members_key(key_template: str, prefix: str, members_key: str) -> None:
    """Refuse a custom ``key_template`` under which a resource's lock key or
    fencing counter would be ``members_key`` (for this prefix; keys of other
    prefixes on the same nodes are the template's author's to keep apart)."""
    pattern, resource_seen = [], False
    for literal, field, spec, conversion in string.Formatter().parse(key_template):
        pattern.append(re.escape(literal))
        if field is None:
            continue
        if spec or conversion or field not in ("prefix", "resource"):
            pattern.append(".*")  # cannot tell what it becomes: assume anything
        elif field == "prefix":
            pattern.append(re.escape(prefix))
        elif resource_seen:
            pattern.append("(?P=resource)")
        else:
            pattern.append(f"(?P<resource>{_RESOURCE_ID})")
            resource_seen = True
    for suffix in ("", ":fencing"):
        match = re.fullmatch("".join(pattern) + re.escape(suffix), members_key, re.DOTALL)
        if match is not None:
            resource = match.groupdict().get("resource")
            raise ConfigurationError(
                f"key_template {key_template!r} could give the members set {members_key!r} "
                f"to a resource{'' if resource is None else f' ({resource!r})'}: "
                "choose one whose keys never contain '//'"
            )


class _Signals:
    """Per-resource notices seen by the factory's pub/sub listeners, kept
    while a campaign or an observer of the resource uses them: counters
    (cheap to take a look at) and events made only when someone waits."""

    __slots__ = ("_changed", "_released", "changes", "releases", "users")

    def __init__(self) -> None:
        self.releases = self.changes = self.users = 0
        self._released: trio.Event | None = None
        self._changed: trio.Event | None = None

    def fire(self, kind: str) -> None:
        if kind == "released":
            self.releases += 1
            if self._released is not None:
                self._released.set()
                self._released = None
        self.changes += 1
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def released_since(self, releases: int) -> None:
        """Return once a release was seen after ``releases`` were."""
        while self.releases == releases:
            if self._released is None:
                self._released = trio.Event()
            await self._released.wait()

    async def changed_since(self, changes: int) -> None:
        """Return once a change was seen after ``changes`` were."""
        while self.changes == changes:
            if self._changed is None:
                self._changed = trio.Event()
            await self._changed.wait()


class RedisElection(BaseElection["RedisFactory"]):
    """The election of one resource by Redlock."""

    __slots__ = ("_value", "key", "token_key")

    def __init__(self, factory: RedisFactory, resource_id: str) -> None:
        super().__init__(factory, resource_id)
        self.key = factory.key_template.format(prefix=factory.prefix, resource=resource_id)
        self.token_key = self.key + ":fencing"
        #: Our lock value while we hold or try for the lock, or hold it on some
        #: node until a release is confirmed: "instance:random".
        self._value: str | None = None

    async def _campaign(self) -> tuple[int, float]:
        factory = self._factory
        signals = factory._use_signals(self.resource_id)
        try:
            return await self._campaign_with(signals)
        finally:
            factory._drop_signals(self.resource_id, signals)

    async def _campaign_with(self, signals: _Signals) -> tuple[int, float]:
        factory = self._factory
        unreachable_rounds = lost_rounds = 0
        while True:
            releases = signals.releases
            try:
                won = await self._try_acquire()
            except MechanismUnavailableError:
                # A node stalling for a moment is not an outage: give up only
                # when a quorum stays unreachable for several rounds.
                unreachable_rounds += 1
                if unreachable_rounds >= factory.unreachable_rounds:
                    raise
                won, delay = None, factory.poll_interval
            else:
                unreachable_rounds = 0
                # Back off from a lost round: soon after the first (candidates
                # that split the nodes between them try again, out of step),
                # doubling up to the poll interval (someone holds the lock).
                delay = min(factory.first_retry * 2**lost_rounds, factory.poll_interval)
                # Capped: 2**1024 rounds would not fit a float (a standby
                # polling for a long-held lock gets there in ~100 TTLs).
                lost_rounds = min(lost_rounds + 1, 16)
            if won is not None:
                return won
            # Wait for a release notice, after which the backoff starts over;
            # the jittered delay also covers a missed notice.
            with trio.move_on_after(delay * random.uniform(0.5, 1.5)):
                await signals.released_since(releases)
                lost_rounds = 0

    async def _try_acquire(self) -> tuple[int, float] | None:
        factory = self._factory
        if self._value is not None:
            await self._delete(notice=False)  # an earlier round's undo did not reach a quorum
        value = f"{self.instance_id}:{secrets.token_hex(20)}"
        self._value = value
        # One call per node for every round submitted now (other campaigns'
        # too); the validity window runs from the moment it was sent.
        submission = factory._acquires.add((self, value))
        try:
            results = await factory._acquires.decided(submission)
        except BaseException:
            if self._value == value and not submission.sent:
                self._value = None  # withdrawn before anything was sent
            raise
        granted = [r for r in results if isinstance(r, int) and r > 0]
        deadline = submission.sent_at + factory.ttl - factory.margin
        if len(granted) >= factory.quorum and trio.current_time() < deadline:
            token = max(granted)
            # Every granting node already counts `token` (the usual case), or
            # a second round raises a quorum's counters to it.
            if min(granted) == token or await self._fence(token):
                return token, deadline
        # Not held: undo the partial acquisition everywhere, then report why.
        await self._delete(notice=False)
        if len(failures(results)) > len(results) - factory.quorum:
            raise unavailable(f"cannot acquire {self.key!r}", results, factory.quorum)
        return None

    async def _fence(self, token: int) -> bool:
        """Make a quorum's counters at least ``token`` (skipped when they are)."""
        factory = self._factory
        results = await fan_out(
            factory.nodes,
            lambda node: node.run(FENCE, [self.key, self.token_key], [self._value or "", token]),
            nursery=factory.nursery,
            enough=factory.decided(lambda r: r == 1),
        )
        return sum(1 for r in results if r == 1) >= factory.quorum

    async def _release(self) -> None:
        """Delete our key everywhere and wake the candidates waiting for it."""
        await self._delete(notice=True)

    async def _delete(self, *, notice: bool) -> None:
        """Compare-and-delete our value on every node, with a release notice
        or without (the undo of a lost round), batched with the others.

        The value is forgotten only once a quorum answered (deleted, or not
        ours there): until then the deletion can be tried again.
        """
        value = self._value
        if value is None:
            return
        factory = self._factory
        releases = factory._releases
        results = await releases.decided(releases.add((self, value, notice)))
        if len(failures(results)) > len(results) - factory.quorum:
            raise unavailable(f"cannot release {self.key!r}", results, factory.quorum)
        if self._value == value:
            self._value = None

    async def _read_leader(self) -> str | None:
        self._check_open()
        factory = self._factory

        async def get(node: RedisNode) -> str | None:
            return await node.client.get(self.key)

        results = await fan_out(factory.nodes, get, nursery=factory.nursery)
        if len(failures(results)) > len(results) - factory.quorum:
            raise unavailable(f"cannot read {self.key!r}", results, factory.quorum)
        holders = Counter(r.rpartition(":")[0] for r in results if isinstance(r, str) and ":" in r)
        for instance_id, count in holders.items():
            if count >= factory.quorum:
                return instance_id
        return None

    @asynccontextmanager
    async def _leader_changes(self) -> AsyncIterator[AsyncIterator[str | None]]:
        changes = self._follow_leader()
        try:
            yield changes
        finally:
            await changes.aclose()  # lets go of the resource's notices now

    async def _follow_leader(self) -> AsyncGenerator[str | None]:
        factory = self._factory
        signals = factory._use_signals(self.resource_id)
        try:
            while True:
                changes = signals.changes
                try:
                    current = await self._read_leader()
                except MechanismUnavailableError:
                    pass  # no quorum right now: keep following, the next poll re-syncs
                else:
                    yield current
                with trio.move_on_after(factory.poll_interval):
                    await signals.changed_since(changes)
        finally:
            factory._drop_signals(self.resource_id, signals)


class _RenewalRound:
    """One renewal: the terms it covered, the encoded call (reused by the
    next renewal while nothing changed) and each node's answers."""

    __slots__ = ("answers", "holding", "keys", "unconfirmed", "value_args", "values")

    def __init__(
        self, holding: list[RedisElection], values: list[str], keys: Raw, value_args: Raw
    ) -> None:
        self.holding = holding
        self.values = values
        self.keys = keys
        self.value_args = value_args
        #: Per node, its answer per key (late answers too).
        self.answers: dict[RedisNode, list[int]] = {}
        #: The terms this renewal did not confirm (refused or unconfirmed).
        self.unconfirmed: set[RedisElection] = set()

    def repairs(self, holding: list[RedisElection]) -> dict[RedisNode, list[int]]:
        """Per node, the (key number, token) pairs to set again at the renewal
        of ``holding``: keys this renewal confirmed on a quorum but found
        missing there, of terms still held (same value, before their local
        deadline). Usually none, found without a look at each key."""
        repairs: dict[RedisNode, list[int]] = {}
        position: dict[RedisElection, int] | None = None
        for node, answers in self.answers.items():
            if -1 not in answers:
                continue
            for index, answer in enumerate(answers):
                if answer != -1:
                    continue
                election = self.holding[index]
                token = election._mastership.token
                if (
                    election in self.unconfirmed
                    or election._value != self.values[index]
                    or not election._mastership.held
                    or not token
                ):
                    continue
                if position is None:
                    position = {e: i for i, e in enumerate(holding)}
                now = position.get(election)
                if now is not None:
                    repairs.setdefault(node, []).extend((now + 1, token))  # Lua counts from 1
        return repairs


class RedisFactory(BaseFactory[RedisElection]):
    """One instance running Redlock over ``nodes``."""

    def __init__(
        self,
        nodes: Sequence[RedisNode],
        *,
        prefix: str,
        key_template: str,
        instance_id: str,
        ttl: float,
        close_timeout: float,
    ) -> None:
        super().__init__(instance_id=instance_id, ttl=ttl, close_timeout=close_timeout)
        self.nodes = list(nodes)
        self.quorum = len(self.nodes) // 2 + 1
        self.prefix = prefix
        self.key_template = key_template
        self.channel = f"{prefix}:election2"
        self.ttl_ms = math.ceil(ttl * 1000)
        #: Fallback retry period of waiting candidates and observers.
        self.poll_interval = ttl / 10
        #: First backoff after a lost acquire round; doubles up to the poll interval.
        self.first_retry = self.poll_interval / 16
        #: Consecutive acquire rounds without a quorum of answers before a
        #: campaign gives up with MechanismUnavailableError.
        self.unreachable_rounds = 3
        self._resource_signals: dict[str, _Signals] = {}
        self.members_key = members_key_of(prefix)
        check_members_key(key_template, prefix, self.members_key)
        #: Our presence is on the nodes (joined, not closed): renewals refresh it.
        self._present = False
        #: Per node, the members its latest answer to a join or renewal listed,
        #: with their local expiry; a node that failed to answer is left out.
        self._member_expiries: dict[RedisNode, dict[str, float]] = {}
        self._member_answers = trio.Event()
        #: The member set as those answers show it; observers re-read when it changes.
        self._members_view: frozenset[str] | None = None
        #: Set at every possible change of the members: notices, answers, expiry.
        self._members_changed = trio.Event()
        #: Join and renewal calls in flight: each may add our presence again.
        self._presence_writes = 0
        self._presence_idle = trio.Event()
        self._presence_idle.set()
        #: Concurrent acquire rounds and deletions, one call per node per batch.
        self._acquires: Batcher[tuple[RedisElection, str]] = Batcher(
            self.nodes,
            ACQUIRE_MANY,
            self._encode_acquires,
            quorum=self.quorum,
            success=lambda answer: isinstance(answer, int) and answer > 0,
            nursery=lambda: self.nursery,
        )
        self._releases: Batcher[tuple[RedisElection, str, bool]] = Batcher(
            self.nodes,
            RELEASE_MANY,
            self._encode_releases,
            quorum=self.quorum,
            success=lambda answer: True,
            nursery=lambda: self.nursery,
        )
        #: The last renewal: what it sent (reused while the held keys and
        #: values stay the same) and what each node answered.
        self._last_renewal: _RenewalRound | None = None

    def decided(self, success: Callable[[Any], bool]) -> Callable[[Sequence[object]], bool]:
        """A fan-out is decided once a quorum succeeded or can no longer."""

        def enough(results: Sequence[object]) -> bool:
            answered = [r for r in results if not _pending(r)]
            succeeded = sum(1 for r in answered if not isinstance(r, NodeFailure) and success(r))
            return (
                succeeded >= self.quorum or len(answered) - succeeded > len(results) - self.quorum
            )

        return enough

    def _create_election(self, resource_id: str) -> RedisElection:
        return RedisElection(self, resource_id)

    def _encode_acquires(
        self, items: list[tuple[RedisElection, str]]
    ) -> tuple[list[Arg], list[Arg]]:
        keys = [e.key for e, _ in items] + [e.token_key for e, _ in items]
        args: list[str] = []
        for election, value in items:
            args += (value, election.resource_id)
        return [bulk_strings(keys)], [self.ttl_ms, self.channel, bulk_strings(args)]

    def _encode_releases(
        self, items: list[tuple[RedisElection, str, bool]]
    ) -> tuple[list[Arg], list[Arg]]:
        args: list[str] = []
        for election, value, notice in items:
            args += (value, election.resource_id if notice else "")
        return [bulk_strings([e.key for e, _, _ in items])], [self.channel, bulk_strings(args)]

    def _use_signals(self, resource_id: str) -> _Signals:
        """The resource's notices, kept until :meth:`_drop_signals`."""
        signals = self._resource_signals.get(resource_id)
        if signals is None:
            signals = self._resource_signals[resource_id] = _Signals()
        signals.users += 1
        return signals

    def _drop_signals(self, resource_id: str, signals: _Signals) -> None:
        signals.users -= 1
        if signals.users == 0 and self._resource_signals.get(resource_id) is signals:
            del self._resource_signals[resource_id]

    async def _open(self) -> None:
        async def ping(node: RedisNode) -> object:
            return await node.client.ping()

        # Connecting (and the handshake) takes longer than a call on a warm
        # connection; allow it a second, as the failure is reported at once anyway.
        results = await fan_out(
            self.nodes, ping, nursery=self.nursery, limit=max(1.0, self.nodes[0].timeout)
        )
        if len(failures(results)) > len(results) - self.quorum:
            raise unavailable("cannot open", results, self.quorum)
        # Not before the listeners subscribed (or failed to): an observer or
        # a waiting campaign must not miss a notice sent right after opening.
        first_tries = [trio.Event() for _ in self.nodes]
        for node, tried in zip(self.nodes, first_tries, strict=True):
            self.nursery.start_soon(self._listen, node, tried)
        with trio.move_on_after(max(1.0, self.nodes[0].timeout)):
            for tried in first_tries:
                await tried.wait()

    async def _listen(self, node: RedisNode, tried: trio.Event) -> None:
        """Follow the prefix's channel on one node; reconnect after failures.
        ``tried`` is set once subscribed, or once the first attempt failed."""
        while True:
            with suppress(RedisError, OSError):
                await self._follow_channel(node, tried)
            tried.set()
            await trio.sleep(self.retry_interval)

    async def _follow_channel(self, node: RedisNode, subscribed: trio.Event) -> None:
        async with node.client.subscribe(self.channel) as messages:
            async for message in messages:
                if message.kind == "subscribe":
                    # (Re)subscribed: a notice may have been missed meanwhile.
                    subscribed.set()
                    self._fire_members()
                if message.kind != "message":
                    continue
                kind, _, resources = str(message.data).partition(":")
                if kind in ("joined", "left"):
                    self._fire_members()
                    continue
                # One notice per batched call: its resources, one per line.
                watched = self._resource_signals
                for resource_id in resources.split("\n") if watched else ():
                    signals = watched.get(resource_id)
                    if signals is not None:
                        signals.fire(kind)

    async def _renew(self, held: list[RedisElection]) -> Renewal[RedisElection]:
        holding = [e for e in held if e._value is not None]
        present = self._present
        if not holding and not present:
            return Renewal(refused=frozenset(held))  # a reader writes nothing
        values = [e._value or "" for e in holding]
        last, self._last_renewal = self._last_renewal, None
        if last is not None and last.holding == holding and last.values == values:
            keys, value_args = last.keys, last.value_args  # at rest: nothing changed
        else:
            keys = bulk_strings(
                [self.members_key, *(e.key for e in holding), *(e.token_key for e in holding)]
            )
            value_args = bulk_strings(values)
        # A key is set again only where the previous renewal found it missing,
        # only if that renewal found it on a quorum and only before the term's
        # local deadline: nobody else can have held the lock meanwhile, and a
        # key gone from a majority is never brought back.
        repairs = {} if last is None else last.repairs(holding)
        current = _RenewalRound(holding, values, keys, value_args)
        head: list[Arg] = [self.ttl_ms, self.instance_id if present else "", self.channel]
        count = len(holding)

        async def extend(node: RedisNode) -> list[int]:
            reply = await self._presence_call(
                node, EXTEND, [keys], [*head, value_args, *repairs.get(node, ())]
            )
            answers: list[int] = reply[0]
            # Recorded even after the renewal is decided: the slowest node
            # is the one most likely to lack keys.
            current.answers[node] = answers
            return answers

        def all_extended(answers: object) -> bool:
            return isinstance(answers, list) and answers.count(1) == count

        # Unlike an acquire, an extension counts whenever it is answered: its
        # deadline runs from the send time. So a large batch may take up to the
        # renewal interval, not just the per-node timeout.
        def every_key_decided(results: Sequence[object]) -> bool:
            """Each key extended by a quorum or refused by a majority already."""
            if sum(1 for r in results if all_extended(r)) < self.quorum:
                answered = [r for r in results if isinstance(r, list)]
                for index in range(count):
                    extended = sum(1 for r in answered if r[index] == 1)
                    refused = len(answered) - extended
                    if extended < self.quorum and refused <= len(results) - self.quorum:
                        return False
            # Our presence too: refreshed on a quorum, or it cannot be.
            return not present or quorum_decided(results)

        quorum_decided = self.decided(lambda r: True)

        results = await fan_out(
            self.nodes,
            extend,
            nursery=self.nursery,
            enough=every_key_decided,
            limit=self.renew_interval / 2,
        )
        answered: list[list[int]] = [r for r in results if not isinstance(r, NodeFailure)]
        if not answered or (not holding and len(answered) < self.quorum):
            # Nothing renewed: no key, and our presence not on a quorum.
            raise unavailable("cannot extend", results, self.quorum)
        refused, unconfirmed = set(), set()
        if sum(1 for r in answered if all_extended(r)) < self.quorum:
            for index, election in enumerate(holding):
                # Only a node that still had the key extends the term; one that
                # got it back only now says nothing about the time in between.
                extended = sum(1 for r in answered if r[index] == 1)
                if extended >= self.quorum:
                    continue
                if len(answered) - extended >= self.quorum:
                    refused.add(election)  # a majority says the lock is not ours
                else:
                    unconfirmed.add(election)
        current.unconfirmed = refused | unconfirmed
        self._last_renewal = current
        refused.update(e for e in held if e._value is None)
        return Renewal(refused=frozenset(refused), unconfirmed=frozenset(unconfirmed))

    # -- membership ------------------------------------------------------------

    async def _register_presence(self) -> None:
        """Add our presence on a quorum at once and announce it."""

        async def join(node: RedisNode) -> object:
            return await self._presence_call(
                node, JOIN, [self.members_key], [self.instance_id, self.ttl_ms, self.channel]
            )

        # Like a campaign, a join gives up only when a quorum stays
        # unreachable for several rounds (a first call may need to connect).
        for round_ in range(1, self.unreachable_rounds + 1):
            results = await fan_out(
                self.nodes, join, nursery=self.nursery, enough=self.decided(lambda r: True)
            )
            if len(failures(results)) <= len(results) - self.quorum:
                break
            if round_ == self.unreachable_rounds:
                # Where it got through, our presence expires within a TTL.
                raise unavailable(f"cannot join as {self.instance_id!r}", results, self.quorum)
            await trio.sleep(self.poll_interval * random.uniform(0.5, 1.5))
        self._present = True
        self.nursery.start_soon(self._watch_members)

    async def _presence_call(
        self, node: RedisNode, script: str, keys: list[Arg], args: list[Arg]
    ) -> Any:
        """Run a join or renewal (``JOIN``, ``EXTEND``) on ``node``; note the
        members it lists."""
        if self._presence_writes == 0:
            self._presence_idle = trio.Event()
        self._presence_writes += 1
        try:
            reply = await node.run(script, keys, args)
        except BaseException:
            self._note_members(node, None)
            raise
        finally:
            self._presence_writes -= 1
            if self._presence_writes == 0:
                self._presence_idle.set()
        self._note_members(node, reply[1])
        return reply

    def _note_members(self, node: RedisNode, listed: Sequence[Any] | None) -> None:
        """Record what ``node`` answered: its time in ms, then (id, expiry in
        ms) pairs; each expiry is moved to trio's clock by its distance from
        the node's time, counted from now (the answer's arrival, so never
        before the node's own expiry). ``None`` or nothing: no answer."""
        if not listed:
            self._member_expiries.pop(node, None)
        else:
            received = trio.current_time()
            node_now = int(listed[0])
            self._member_expiries[node] = {
                str(member): received + (float(expiry) - node_now) / 1000
                for member, expiry in zip(listed[1::2], listed[2::2], strict=True)
            }
        self._member_answers.set()
        self._member_answers = trio.Event()

    def _fire_members(self) -> None:
        self._members_changed.set()
        self._members_changed = trio.Event()

    async def _watch_members(self) -> None:
        """Wake member observers when the set the latest answers list changes:
        at an answer, or the moment an entry expires, so a crashed member is
        noticed at its expiry without a single command (observers then read)."""
        while True:
            answers = self._member_answers
            now = trio.current_time()
            counts: Counter[str] = Counter()
            next_expiry = math.inf
            for listed in self._member_expiries.values():
                for member, expiry in listed.items():
                    if expiry > now:
                        counts[member] += 1
                        next_expiry = min(next_expiry, expiry)
            view = frozenset(m for m, count in counts.items() if count >= self.quorum)
            if view != self._members_view:
                self._members_view = view
                self._fire_members()
            with trio.move_on_at(next_expiry):
                await answers.wait()

    def _members_decided(self, results: Sequence[object]) -> bool:
        """A members read is decided once every instance is listed by a quorum
        or can no longer be (an instance not seen yet could be on the nodes
        still to answer)."""
        pending = sum(1 for r in results if _pending(r))
        if pending >= self.quorum:
            return False
        counts = Counter(m for r in results if isinstance(r, list) for m in r)
        return all(c >= self.quorum or c + pending < self.quorum for c in counts.values())

    async def _read_members(self) -> frozenset[str]:
        if self._closed:
            raise ElectionClosedError(f"factory {self.instance_id!r} is closed")

        async def read(node: RedisNode) -> list[str]:
            return [str(m) for m in await node.run(MEMBERS, [self.members_key], [])]

        results = await fan_out(
            self.nodes, read, nursery=self.nursery, enough=self._members_decided
        )
        if len(failures(results)) > len(results) - self.quorum:
            raise unavailable("cannot read the members", results, self.quorum)
        counts = Counter(m for r in results if isinstance(r, list) for m in set(r))
        return frozenset(m for m, count in counts.items() if count >= self.quorum)

    @asynccontextmanager
    async def _member_changes(self) -> AsyncIterator[AsyncIterator[frozenset[str]]]:
        yield self._follow_members()

    async def _follow_members(self) -> AsyncIterator[frozenset[str]]:
        while True:
            changed = self._members_changed  # taken before reading and yielding
            try:
                current = await self._read_members()
            except MechanismUnavailableError:
                # No quorum now: try again soon (not at rest: only in trouble).
                with trio.move_on_after(self.retry_interval):
                    await changed.wait()
                continue
            yield current
            await changed.wait()

    async def _release_all(self, elections: list[RedisElection]) -> None:
        """Compare-and-delete every key in a few script calls per node (a
        batch of :data:`RELEASE_BATCH`), all nodes at once."""
        releasing = [(e, e._value) for e in elections if e._value is not None]
        calls = [
            self._encode_releases(
                [(e, v or "", True) for e, v in releasing[start : start + RELEASE_BATCH]]
            )
            for start in range(0, len(releasing), RELEASE_BATCH)
        ]

        async def release(node: RedisNode) -> int:
            released = 0
            for keys, args in calls:
                released += sum(await node.run(RELEASE_MANY, keys, args))
            return released

        results = await fan_out(self.nodes, release, nursery=self.nursery, limit=self.close_timeout)
        if len(failures(results)) > len(results) - self.quorum:
            raise unavailable(f"cannot release {len(releasing)} keys", results, self.quorum)
        for election, value in releasing:
            if election._value == value:
                election._value = None

    async def _close_session(self) -> None:
        """Remove our presence from every node and announce it."""
        if not self._present:
            return
        self._present = False
        # A join or renewal still on its way could add us back after the leave.
        with trio.move_on_after(self.close_timeout / 2):
            await self._presence_idle.wait()
        results = await fan_out(
            self.nodes,
            lambda node: node.run(LEAVE, [self.members_key], [self.instance_id, self.channel]),
            nursery=self.nursery,
        )
        self._member_expiries.clear()
        self._fire_members()
        if len(failures(results)) > len(results) - self.quorum:
            raise unavailable(
                f"cannot leave as {self.instance_id!r} (gone within a TTL)", results, self.quorum
            )
