"""``with_mastership(grace=S)``: a scope that ends S seconds before the local expiry."""

from __future__ import annotations

import math

import pytest
import trio

from election2 import ConfigurationError
from election2.mechanisms.memory import MemoryBackend

pytestmark = pytest.mark.autojump_clock
TTL = 10.0  # the ttl of the `backend` fixture


async def test_grace_scope_ends_grace_seconds_before_the_plain_one(backend: MemoryBackend) -> None:
    async with backend.open_factory("a") as fa:
        election = await fa.new_election("job")
        await election.await_mastership()
        async with election.with_mastership() as hard:
            async with election.with_mastership(grace=2.0) as soft:
                assert soft.deadline == hard.deadline - 2.0
                backend.partition("a")  # renewals stop: the deadlines stop moving
                await trio.sleep_forever()
            soft_ended = trio.current_time()
            assert soft.cancelled_caught and election.is_master  # time to wind down
            await trio.sleep_forever()
        hard_ended = trio.current_time()
        assert hard.cancelled_caught and not election.is_master
        assert hard_ended - soft_ended == pytest.approx(2.0)


async def test_grace_scope_follows_renewals(backend: MemoryBackend) -> None:
    async with backend.open_factory("a") as fa:
        election = await fa.new_election("job")
        await election.await_mastership()
        async with election.with_mastership(grace=3.0) as soft:
            first = soft.deadline
            await trio.sleep(TTL * 2)  # several renewals
            assert soft.deadline > first
            assert soft.deadline == pytest.approx(fa.lease_deadline - 3.0)
        assert not soft.cancelled_caught


async def test_grace_scope_ends_at_once_on_loss_or_resign(backend: MemoryBackend) -> None:
    async with backend.open_factory("a") as fa:
        election = await fa.new_election("job")
        await election.await_mastership()
        async with election.with_mastership(grace=5.0) as soft:
            await election.resign()
            await trio.lowlevel.checkpoint()
        assert soft.cancelled_caught
        async with election.with_mastership(grace=5.0) as not_master:
            await trio.lowlevel.checkpoint()
        assert not_master.cancelled_caught


@pytest.mark.parametrize("grace", [-1, TTL, TTL + 1, math.nan, math.inf, "1", True, None])
async def test_bad_grace_rejected(backend: MemoryBackend, grace: object) -> None:
    async with backend.open_factory("a") as fa:
        election = await fa.new_election("job")
        await election.await_mastership()
        with pytest.raises(ConfigurationError, match="grace"):
            async with election.with_mastership(grace=grace):  # type: ignore[arg-type]
                pass
        assert election.is_master  # nothing changed
