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
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import trio

from ...errors import MechanismUnavailableError
from .. import host_port
from ._resp import RedisClient, RedisError

__all__ = [
    "ACQUIRE",
    "EXTEND",
    "FENCE",
    "JOIN",
    "LEAVE",
    "MEMBERS",
    "RELEASE",
    "RELEASE_MANY",
    "UNDO",
    "NodeFailure",
    "RedisNode",
    "fan_out",
]

T = TypeVar("T")

#: SET NX PX; on success bump the resource's fencing counter and return it.
ACQUIRE = """
if redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local token = redis.call('incr', KEYS[2])
  redis.call('publish', ARGV[3], 'acquired:' .. ARGV[4])
  return token
end
return -1
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
#: ('' while we are no member: no presence), the prefix's channel, then per
#: key its value and a repair token: where that is not 0 and the key is
#: missing (expired while this node was cut off, or lost in a restart), the
#: key is set again and the counter raised to the token, so a restarted node
#: cannot hand out a lower one later. Answers: per key 1 extended, 2 set
#: again, 0 held by another value, -1 missing; then what :data:`JOIN` returns
#: (empty while no member).
EXTEND = (
    _PRESENCE
    + """
local n = (#KEYS - 1) / 2
local answers = {}
for i = 1, n do
  local key, counter = KEYS[1 + i], KEYS[1 + n + i]
  local value, token = ARGV[2 * i + 2], ARGV[2 * i + 3]
  local current = redis.call('get', key)
  if current == value then
    redis.call('pexpire', key, ARGV[1])
    answers[i] = 1
  elseif current then
    answers[i] = 0
  elseif token ~= '0' then
    redis.call('set', key, value, 'PX', ARGV[1])
    if tonumber(redis.call('get', counter) or '0') < tonumber(token) then
      redis.call('set', counter, token)
    end
    answers[i] = 2
  else
    answers[i] = -1
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

#: Compare-and-delete, then wake the candidates waiting for this resource.
RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  redis.call('del', KEYS[1])
  redis.call('publish', ARGV[2], 'released:' .. ARGV[3])
  return 1
end
return 0
"""

#: RELEASE for many keys at once (a closing factory): KEYS the locks, ARGV the
#: channel, then each key's value and resource.
RELEASE_MANY = """
local released = 0
for i, key in ipairs(KEYS) do
  if redis.call('get', key) == ARGV[2 * i] then
    redis.call('del', key)
    redis.call('publish', ARGV[1], 'released:' .. ARGV[2 * i + 1])
    released = released + 1
  end
end
return released
"""

#: Compare-and-delete without a notice: undoes a lost acquire round. A notice
#: would wake every other waiter into a round of its own, whose undo would
#: wake the others again: rounds back to back for as long as a node is free.
UNDO = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
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

    async def run(self, script: str, keys: Sequence[str], args: Sequence[str | int]) -> Any:
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
