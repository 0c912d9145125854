"""Memory-mechanism specifics: faults, history, named backends, URLs.

All run under trio's MockClock with autojump, so TTLs of 10 s cost nothing.
"""

from __future__ import annotations

import math

import pytest
import trio

import election2
from election2 import ConfigurationError, MechanismUnavailableError
from election2.mechanisms.memory import MemoryBackend

pytestmark = pytest.mark.autojump_clock
TTL = 10.0  # the ttl of the `backend` fixture


async def test_crash_hands_over_after_one_ttl(backend: MemoryBackend) -> None:
    async with backend.open_factory("a") as fa, backend.open_factory("b") as fb:
        ea, eb = await fa.new_election("res"), await fb.new_election("res")
        await ea.await_mastership()
        crashed_at = trio.current_time()
        backend.crash("a")
        await eb.await_mastership()
        took = trio.current_time() - crashed_at
        # a's last renewal was at most renew_interval before the crash.
        assert TTL - fa.renew_interval <= took <= TTL
        assert not ea.is_master
        assert [t.instance_id for t in backend.history] == ["a", "b"]


async def test_partitioned_master_stops_before_anyone_else_wins(backend: MemoryBackend) -> None:
    async with backend.open_factory("a") as fa, backend.open_factory("b") as fb:
        ea, eb = await fa.new_election("res"), await fb.new_election("res")
        await ea.await_mastership()
        stopped_at = math.nan
        async with trio.open_nursery() as nursery:

            async def guarded() -> None:
                nonlocal stopped_at
                async with ea.with_mastership() as scope:
                    await trio.sleep_forever()
                assert scope.cancelled_caught
                stopped_at = trio.current_time()

            nursery.start_soon(guarded)
            await trio.sleep(1)
            backend.partition("a")
            await eb.await_mastership()
            won_at = trio.current_time()
        assert stopped_at < won_at
        # The margin is the drift allowance: 1 % of the TTL plus 2 ms.
        assert won_at - stopped_at == pytest.approx(TTL * 0.01 + 0.002, abs=0.01)
        backend.heal("a")
        await trio.sleep(TTL)
        # After healing, a learns its term is gone and can queue again.
        assert not ea.is_master
        with trio.move_on_after(1):
            await ea.await_mastership()
        assert await ea.leader() == "b"


async def test_partition_healed_in_time_keeps_the_term(backend: MemoryBackend) -> None:
    async with backend.open_factory("a") as fa:
        ea = await fa.new_election("res")
        await ea.await_mastership()
        token = ea.fencing_token
        backend.partition("a")
        await trio.sleep(fa.renew_interval * 1.5)  # one renewal fails
        backend.heal("a")
        await trio.sleep(fa.renew_interval)
        assert ea.is_master and ea.fencing_token == token
        assert len(backend.history) == 1


async def test_partitioned_calls_fail_with_unavailable(backend: MemoryBackend) -> None:
    async with backend.open_factory("a") as fa:
        ea = await fa.new_election("res")
        backend.partition("a")
        with pytest.raises(MechanismUnavailableError, match="'a'"):
            await ea.await_mastership()
        with pytest.raises(MechanismUnavailableError):
            await ea.leader()
        backend.heal("a")
        await ea.await_mastership()
        assert ea.is_master


async def test_history_records_terms(backend: MemoryBackend) -> None:
    async with backend.open_factory("a") as fa, backend.open_factory("b") as fb:
        ea, eb = await fa.new_election("res"), await fb.new_election("res")
        await ea.await_mastership()
        await trio.sleep(3)
        await ea.resign()
        await eb.await_mastership()
        first, second = backend.history
        assert (first.instance_id, first.token, first.start, first.end) == ("a", 1, 0.0, 3.0)
        assert (second.instance_id, second.token, second.end) == ("b", 2, None)
        assert backend.candidates("res") == ["b"]


async def test_lease_covers_all_elections_of_a_factory(backend: MemoryBackend) -> None:
    async with backend.open_factory("a") as fa:
        elections = [await fa.new_election(f"r{i}") for i in range(3)]
        for election in elections:
            await election.await_mastership()
        async with elections[0].with_mastership() as s0, elections[2].with_mastership() as s2:
            assert s0.deadline == s2.deadline == fa.lease_deadline


async def test_duplicate_instance_id_rejected(backend: MemoryBackend) -> None:
    async with backend.open_factory("a"):
        with pytest.raises(ConfigurationError, match="'a'"):
            async with backend.open_factory("a"):
                pass


async def test_named_backend_via_url() -> None:
    async with election2.open_factory("memory://urltest?ttl=4", instance_id="a") as fa:
        async with election2.open_factory("memory://urltest", instance_id="b") as fb:
            ea, eb = await fa.new_election("res"), await fb.new_election("res")
            await ea.await_mastership()
            assert await eb.leader() == "a"
    assert MemoryBackend.named("urltest").ttl == 4
    with pytest.raises(ConfigurationError, match="urltest"):
        MemoryBackend.named("urltest", ttl=5)


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("nosuch://x", "'nosuch'"),
        ("no-scheme-at-all", "no-scheme-at-all"),
        ("memory://x?ttl=0", "0"),
        ("memory://x?ttl=-3", "-3"),
        ("memory://x?ttl=nan", "nan"),
        ("memory://x?ttl=1e9", "1e9"),
        ("memory://x?ttl=soon", "soon"),
        ("memory://x?colour=red", "colour"),
    ],
)
async def test_bad_urls_rejected(url: str, fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment.replace("?", r"\?")):
        async with election2.open_factory(url, instance_id="a"):
            pass


@pytest.mark.parametrize("ttl", [0, -1, math.inf, math.nan, 10**9, "ten", True, None])
def test_bad_backend_ttl_rejected(ttl: object) -> None:
    with pytest.raises(ConfigurationError, match="ttl"):
        MemoryBackend(ttl=ttl)  # type: ignore[arg-type]


@pytest.mark.parametrize("instance_id", ["", "a/b", "x\n", 7])
async def test_bad_instance_id_rejected(backend: MemoryBackend, instance_id: object) -> None:
    with pytest.raises(ConfigurationError, match="instance id"):
        async with backend.open_factory(instance_id):  # type: ignore[arg-type]
            pass
    assert backend._open_instances == set()


async def test_factory_close_revokes_lease_and_hands_over(backend: MemoryBackend) -> None:
    async with backend.open_factory("b") as fb:
        eb = await fb.new_election("res")
        async with backend.open_factory("a") as fa:
            await (await fa.new_election("res")).await_mastership()
        start = trio.current_time()
        await eb.await_mastership()
        assert trio.current_time() == start  # no TTL wait: the lease was revoked
        assert backend._lease_expiry.keys() == {"b"}


async def test_campaign_after_lease_expired_gets_a_new_lease(backend: MemoryBackend) -> None:
    async with backend.open_factory("a") as fa, backend.open_factory("b") as fb:
        ea, eb = await fa.new_election("res"), await fb.new_election("res")
        await ea.await_mastership()
        backend.partition("a")
        await eb.await_mastership()  # a's lease expired
        backend.heal("a")
        await eb.resign()
        # a campaigns before its renewal loop noticed anything: it must not reuse
        # the dead term, and it wins a fresh one with a valid deadline.
        await ea.await_mastership()
        assert ea.is_master and ea.fencing_token == 3
        await trio.sleep(TTL * 2)
        assert ea.is_master and ea.fencing_token == 3


async def test_campaign_right_after_healing_a_long_partition(backend: MemoryBackend) -> None:
    async with backend.open_factory("a") as fa:
        ea = await fa.new_election("res")
        await ea.await_mastership()
        backend.partition("a")
        await trio.sleep(TTL * 1.5)  # the lease expires in the backend
        backend.heal("a")
        # Before the renewal loop noticed: the expired lease is replaced, no error.
        await ea.await_mastership()
        assert ea.is_master and await ea.leader() == "a"


async def test_resign_while_partitioned_is_released_after_healing(backend: MemoryBackend) -> None:
    async with backend.open_factory("a") as fa, backend.open_factory("b") as fb:
        ea, eb = await fa.new_election("res"), await fb.new_election("res")
        await ea.await_mastership()
        backend.partition("a")
        await ea.resign()  # no error: the release is retried in the background
        assert not ea.is_master and backend.candidates("res") == ["a"]
        backend.heal("a")
        await trio.sleep(fa.renew_interval)
        assert backend.candidates("res") == []
        await eb.await_mastership()
