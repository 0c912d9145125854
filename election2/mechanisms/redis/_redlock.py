"""The Redlock layer: N independent Redis masters, scripts, concurrent fan-out.

The key/value protocol is the standard Redlock one — ``SET key value NX PX
ttl`` with a random value, compare-and-pexpire to extend, compare-and-delete
to release — so other Redlock clients on the same keys exclude us and we them.
Beyond Redlock, an extension sets a held term's key again on a node that lost
it (:data:`EXTEND`), so a term outlives one minority fault after another,
and refreshes the factory's presence in the prefix's members set in the
same call (:data:`JOIN`, :data:`LEAVE` and :data:`MEMBERS` handle the rest).
Each call goes to every node at once, each bounded by a small per-node
timeout; the caller counts answers against the quorum.

Campaigns of different resources that start together share their calls: a
:class:`Batcher` coalesces the acquire (or release) rounds submitted in the
same moment into ONE script call per node (:data:`ACQUIRE_MANY`,
:data:`RELEASE_MANY`; at most :data:`MAX_BATCH` keys a call), and still
answers each round on its own: its own per-node results, decided as soon as
a quorum granted (or can no longer) for that key, and the time the call was
sent, from which the round's validity window runs.
"""

from __future__ import annotations

import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import trio

from ...errors import MechanismUnavailableError
from .. import host_port
from ._resp import Arg, RedisClient, RedisError

__all__ = [
    "ACQUIRE_MANY",
    "EXTEND",
    "FENCE",
    "JOIN",
    "LEAVE",
    "LINGER_PASSES",
    "MAX_BATCH",
    "MEMBERS",
    "RELEASE_MANY",
    "Batcher",
    "NodeFailure",
    "RedisNode",
    "fan_out",
]

#: How many scheduler passes a batched round waits for more submissions
#: while other tasks are runnable (none: it goes at once).
LINGER_PASSES = 16

#: Keys per batched script call: 10,000 keys take a few calls, and no call
#: blocks a node for long (a few ms).
MAX_BATCH = 500

T = TypeVar("T")

#: SET NX PX for many keys, each its own Redlock round on this node: where
#: it is set, bump the resource's fencing counter and answer it, else -1.
#: KEYS: the n locks, then their n counters. ARGV: the ttl in ms, the
#: prefix's channel, then per key its value and resource. One notice for
#: every key set: ``acquired:`` and the resources, one per line (a resource
#: id has no control character).
ACQUIRE_MANY = """
local n = #KEYS / 2
local answers, acquired = {}, {}
for i = 1, n do
  if redis.call('set', KEYS[i], ARGV[2 * i + 1], 'NX', 'PX', ARGV[1]) then
    answers[i] = redis.call('incr', KEYS[n + i])
    acquired[#acquired + 1] = ARGV[2 * i + 2]
  else
    answers[i] = -1
  end
end
if #acquired > 0 then
  redis.call('publish', ARGV[2], 'acquired:' .. table.concat(acquired, '\\n'))
end
return answers
"""

#: Raise the fencing counter to the term's token while we hold the lock.
FENCE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  if tonumber(redis.call('get', KEYS[2]) or '0') < tonumber(ARGV[2]) then
    redis.call('set', KEYS[2], ARGV[2])
  end
  return 1
end
return 0
"""

#: The presence of one instance in the prefix's members set (a sorted set:
#: member = instance id, score = expiry in ms on this node's clock, taken from
#: its ``TIME`` in the script: Redis >= 5 replicates effects, and earlier
#: versions are told to). Drops expired entries, adds or refreshes ours, makes
#: the set itself expire with its newest entry (nothing is left behind when
#: every member is gone), and publishes ``joined:<id>`` when ours was missing
#: (or always, on a join). Returns the node's time, then the live entries as
#: id, expiry pairs.
_PRESENCE = """
local function presence(key, id, ttl, channel, always)
  local t = redis.call('time')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('zremrangebyscore', key, '-inf', now)
  local added = redis.call('zadd', key, now + tonumber(ttl), id)
  redis.call('pexpire', key, ttl)
  if added == 1 or always then
    redis.call('publish', channel, 'joined:' .. id)
  end
  local listed = redis.call('zrange', key, 0, -1, 'withscores')
  table.insert(listed, 1, now)
  return listed
end
if redis.replicate_commands then redis.replicate_commands() end
"""

#: Batched compare-and-pexpire, one call per node per tick for every key held,
#: and the factory's presence with them. KEYS: the members set, the n lock
#: keys, then their n fencing counters. ARGV: the ttl in ms, our instance id
#: ('' while we are no member: no presence), the prefix's channel, the n
#: values, then repairs as (key number, token) pairs, usually none: where
#: such a key is missing (expired while this node was cut off, or lost in a
#: restart), it is set again and the counter raised to the token, so a
#: restarted node cannot hand out a lower one later. The values and keys are
#: the same for every node (encoded once); only the repairs differ. Answers:
#: per key 1 extended, 2 set again, 0 held by another value, -1 missing;
#: then what :data:`JOIN` returns (empty while no member).
EXTEND = (
    _PRESENCE
    + """
local n = (#KEYS - 1) / 2
local answers = {}
for i = 1, n do
  local key = KEYS[1 + i]
  local current = redis.call('get', key)
  if current == ARGV[3 + i] then
    redis.call('pexpire', key, ARGV[1])
    answers[i] = 1
  elseif current then
    answers[i] = 0
  else
    answers[i] = -1
  end
end
for j = 4 + n, #ARGV - 1, 2 do
  local i, token = tonumber(ARGV[j]), ARGV[j + 1]
  if answers[i] == -1 then
    redis.call('set', KEYS[1 + i], ARGV[3 + i], 'PX', ARGV[1])
    local counter = KEYS[1 + n + i]
    if tonumber(redis.call('get', counter) or '0') < tonumber(token) then
      redis.call('set', counter, token)
    end
    answers[i] = 2
  end
end
local listed = {}
if ARGV[2] ~= '' then
  listed = presence(KEYS[1], ARGV[2], ARGV[1], ARGV[3], false)
end
return {answers, listed}
"""
)

#: Join: our presence on this node, announced. KEYS: the members set. ARGV:
#: our instance id, the ttl in ms, the channel. Answers as :data:`EXTEND`
#: does for no key: no per-key answers, then the node's time and the live
#: entries as id, expiry pairs.
JOIN = (
    _PRESENCE
    + """
return {{}, presence(KEYS[1], ARGV[1], ARGV[2], ARGV[3], true)}
"""
)

#: Leave: remove our presence and announce it. KEYS: the members set. ARGV:
#: our instance id, the channel.
LEAVE = """
local removed = redis.call('zrem', KEYS[1], ARGV[1])
redis.call('publish', ARGV[2], 'left:' .. ARGV[1])
return removed
"""

#: The live members on this node (a read: no writes). KEYS: the members set.
MEMBERS = """
local t = redis.call('time')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('zrangebyscore', KEYS[1], now + 1, '+inf')
"""

#: Compare-and-delete for many keys: resign, close, withdrawn campaigns and
#: the undo of lost acquire rounds. KEYS: the locks. ARGV: the channel, then
#: per key its value and its resource, or '' for no notice (an undo: a notice
#: would wake every other waiter into a round of its own, whose undo would
#: wake the others again: rounds back to back for as long as a node is free).
#: Answers per key 1 deleted, 0 not ours (or gone). One notice for all that
#: were deleted: ``released:`` and the resources, one per line.
RELEASE_MANY = """
local answers, released = {}, {}
for i, key in ipairs(KEYS) do
  if redis.call('get', key) == ARGV[2 * i] then
    redis.call('del', key)
    answers[i] = 1
    if ARGV[2 * i + 1] ~= '' then
      released[#released + 1] = ARGV[2 * i + 1]
    end
  else
    answers[i] = 0
  end
end
if #released > 0 then
  redis.call('publish', ARGV[1], 'released:' .. table.concat(released, '\\n'))
end
return answers
"""


@dataclass(frozen=True)
class NodeFailure:
    """A node that did not answer (in time)."""

    node: str
    reason: str


class RedisNode:
    """One independent Redis master."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout: float,
        username: str | None = None,
        password: str | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.name = host_port(host, port)
        self.timeout = timeout
        #: Pipelined: one connection for commands, one more while subscribed.
        self.client = RedisClient(
            host,
            port,
            username=username,
            password=password,
            ssl_context=tls,
            connect_timeout=timeout,
        )

    async def run(self, script: str, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        """``EVALSHA`` (``EVAL`` where the node lacks the script)."""
        return await self.client.run_script(script, keys, args)


async def fan_out(
    nodes: Sequence[RedisNode],
    call: Callable[[RedisNode], Awaitable[T]],
    *,
    nursery: trio.Nursery,
    enough: Callable[[Sequence[T | NodeFailure]], bool] | None = None,
    limit: float | None = None,
) -> list[T | NodeFailure]:
    """Run ``call`` on every node concurrently, each bounded by the node's
    timeout (or ``limit`` seconds, for a first connection).

    Returns when every node answered or failed, or as soon as ``enough`` says
    the outcome is decided: a quorum need not wait for a stalled node. The
    stragglers run on in ``nursery`` (the factory's) until their own timeout,
    so a late request is never cut off half-sent.
    """
    results: list[T | NodeFailure] = [NodeFailure(n.name, "no answer yet") for n in nodes]
    remaining = len(nodes)
    decided = trio.Event()

    async def one(index: int, node: RedisNode) -> None:
        nonlocal remaining
        bound = node.timeout if limit is None else limit
        with trio.move_on_after(bound) as bounded:
            try:
                results[index] = await call(node)
            except (RedisError, OSError) as exc:
                results[index] = NodeFailure(node.name, f"{type(exc).__name__}: {exc}")
        if bounded.cancelled_caught:
            results[index] = NodeFailure(node.name, f"no answer within {bound:g} s")
        remaining -= 1
        if remaining == 0 or (enough is not None and enough(results)):
            decided.set()

    for index, node in enumerate(nodes):
        nursery.start_soon(one, index, node)
    await decided.wait()
    return list(results)


def failures(results: Sequence[object]) -> list[NodeFailure]:
    return [r for r in results if isinstance(r, NodeFailure)]


def unavailable(what: str, results: Sequence[object], quorum: int) -> MechanismUnavailableError:
    failed = failures(results)
    named = ", ".join(f"{f.node} ({f.reason})" for f in failed)
    return MechanismUnavailableError(
        f"redis: {what}: {len(results) - len(failed)} of {len(results)} nodes answered, "
        f"a quorum is {quorum}; unreachable: {named}"
    )


ItemT = TypeVar("ItemT")


class Submission(Generic[ItemT]):
    """One resource's round in a :class:`Batcher`: what it asked for and,
    once decided, each node's answer for its key."""

    __slots__ = ("answers", "done", "item", "results", "round", "sent", "sent_at")

    def __init__(self, item: ItemT, nodes: int, round_: _Round[ItemT]) -> None:
        self.item = item
        self.round: _Round[ItemT] | None = round_
        #: Per node: its answer for this key, or a NodeFailure, as they come.
        self.answers: list[object] = [_NO_ANSWER] * nodes
        #: The answers when the round was decided (pending nodes: failures).
        self.results: list[object] = []
        self.done = trio.Event()
        #: Part of a call that went out: withdrawing it now changes nothing.
        self.sent = False
        #: When its call was sent: the round's validity window starts here.
        self.sent_at = 0.0


_NO_ANSWER = NodeFailure("", "no answer yet")


class _Round(Generic[ItemT]):
    """The submissions of one call per node; sealed (encoded, timed) when it
    is sent."""

    __slots__ = ("args", "keys", "sealed", "submissions", "undecided")

    def __init__(self) -> None:
        self.submissions: list[Submission[ItemT]] = []
        self.sealed = False
        self.keys: list[Arg] = []
        self.args: list[Arg] = []
        #: Submissions not decided yet; the next round starts at 0.
        self.undecided = 0


class Batcher(Generic[ItemT]):
    """Coalesces the rounds of one script into one call per node of at most
    :data:`MAX_BATCH` keys (group commit): a round submitted while none is
    in flight goes out at the next scheduler pass, with whatever else was
    submitted meanwhile; one submitted while a round is in flight waits
    for that round to be decided, and goes with all that waited.

    ``encode(items)`` gives a call's keys and arguments; its answer is a list
    with one entry per item. Each submission is decided on its own, as soon
    as ``success`` held on a quorum of nodes for its key or can no longer;
    the stragglers' answers are still recorded, until their own timeout, in
    the factory's nursery (a late call is never cut off).
    """

    def __init__(
        self,
        nodes: Sequence[RedisNode],
        script: str,
        encode: Callable[[list[ItemT]], tuple[list[Arg], list[Arg]]],
        *,
        quorum: int,
        success: Callable[[object], bool],
        nursery: Callable[[], trio.Nursery],
    ) -> None:
        self._nodes = list(nodes)
        self._script = script
        self._encode = encode
        self._quorum = quorum
        self._success = success
        self._nursery = nursery
        #: Rounds not sent yet; the first one is started (or next to be).
        self._waiting: deque[_Round[ItemT]] = deque()
        #: A round is started and not decided yet.
        self._busy = False

    def add(self, item: ItemT) -> Submission[ItemT]:
        """Queue ``item``'s round; await :meth:`decided`."""
        waiting = self._waiting
        if not waiting or len(waiting[-1].submissions) >= MAX_BATCH:
            waiting.append(_Round())
        round_ = waiting[-1]
        submission = Submission(item, len(self._nodes), round_)
        round_.submissions.append(submission)
        if not self._busy:
            self._start()
        return submission

    async def decided(self, submission: Submission[ItemT]) -> list[object]:
        """Wait until ``submission``'s round is decided; its results per node.
        Cancelled before its call went out, it is withdrawn (``sent`` stays
        False: nothing reached any node)."""
        try:
            await submission.done.wait()
        except BaseException:
            round_ = submission.round
            if round_ is not None and not round_.sealed:
                round_.submissions.remove(submission)
            raise
        return submission.results

    def _start(self) -> None:
        """Start the first waiting round (it goes out at the next pass or soon after)."""
        self._busy = True
        self._nursery().start_soon(self._send, self._waiting[0])

    async def _send(self, round_: _Round[ItemT]) -> None:
        # Other tasks are on their way (campaigns started together pass a
        # few checkpoints before they submit): let them join this round, for
        # a few scheduler passes at most. Alone, the round goes at once.
        for _ in range(LINGER_PASSES):
            if (
                len(round_.submissions) >= MAX_BATCH
                or not trio.lowlevel.current_statistics().tasks_runnable
            ):
                break
            await trio.lowlevel.cancel_shielded_checkpoint()
        self._seal(round_)
        if not round_.submissions:
            return
        nursery = self._nursery()
        for index, node in enumerate(self._nodes[1:], 1):
            nursery.start_soon(self._call, round_, index, node)
        await self._call(round_, 0, self._nodes[0])

    def _finished(self) -> None:
        """The round in flight is decided: start the next one, if any."""
        self._busy = False
        if self._waiting:
            self._start()

    def _seal(self, round_: _Round[ItemT]) -> None:
        """Close the round to new submissions, encode it, start its window."""
        round_.sealed = True
        self._waiting.popleft()  # the started round is the first one
        submissions = round_.submissions
        round_.undecided = len(submissions)
        if not submissions:
            self._finished()  # every submitter withdrew
            return
        round_.keys, round_.args = self._encode([s.item for s in submissions])
        sent_at = trio.current_time()  # before any node was written to
        for submission in submissions:
            submission.sent, submission.sent_at = True, sent_at

    def _decided(self, results: list[object]) -> bool:
        succeeded = failed = 0
        for result in results:
            if result is _NO_ANSWER:
                continue
            if not isinstance(result, NodeFailure) and self._success(result):
                succeeded += 1
            else:
                failed += 1
        return succeeded >= self._quorum or failed > len(results) - self._quorum

    async def _call(self, round_: _Round[ItemT], index: int, node: RedisNode) -> None:
        submissions = round_.submissions
        reply: object
        with trio.move_on_after(node.timeout) as bounded:
            try:
                reply = await node.run(self._script, round_.keys, round_.args)
            except (RedisError, OSError) as exc:
                reply = NodeFailure(node.name, f"{type(exc).__name__}: {exc}")
        if bounded.cancelled_caught:
            reply = NodeFailure(node.name, f"no answer within {node.timeout:g} s")
        if not isinstance(reply, NodeFailure) and not (
            isinstance(reply, list) and len(reply) == len(submissions)
        ):
            reply = NodeFailure(node.name, f"unexpected answer {reply!r:.80}")
        failed = reply if isinstance(reply, NodeFailure) else None
        was_undecided = round_.undecided
        for position, submission in enumerate(submissions):
            answers = submission.answers
            answers[index] = reply[position] if failed is None else failed  # type: ignore[index]
            if not submission.done.is_set() and self._decided(answers):
                submission.results = list(answers)
                submission.round = None
                submission.done.set()
                round_.undecided -= 1
        if was_undecided and not round_.undecided:
            self._finished()
