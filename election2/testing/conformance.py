"""A conformance suite every mechanism runs, ours or a third party's.

Subclass :class:`ElectionConformance` in a test module, say how to open a
factory on a fresh shared backend and how to end a term behind an election's
back, and pytest (with pytest-trio in ``trio_mode``) runs every check::

    class TestMyMechanism(ElectionConformance):
        ttl = 3.0

        @pytest.fixture(autouse=True)
        def _backend(self, my_server):
            self.url = f"mine://127.0.0.1:{my_server.port}/test-{uuid.uuid4().hex}?ttl=3"

        def open_factory(self, instance_id):
            return election2.open_factory(self.url, instance_id=instance_id)

        async def force_loss(self, factory, election):
            await my_server.delete_key_of(election)

        async def cut_off(self, factory):       # the backend is down for factory:
            ...                                 # its calls fail fast (refused)

        async def reconnect(self, factory):
            ...

Time bounds are expressed in TTLs, so the suite runs unchanged on a real
backend and, for the memory mechanism, under ``MockClock(autojump_threshold=0)``.
The checks are those of Trillian's ``election2/testonly`` plus the ones it lacks:
handover between instances, independence of resources, several scopes at once,
unexpected loss, fencing tokens, ``leader()``/``observe()`` and bad input.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager

import pytest
import trio

from .._election import Election, Factory
from ..errors import (
    ElectionClosedError,
    ElectionError,
    InvalidResourceIdError,
    MechanismUnavailableError,
)
from .faults import FaultyElection, Method

__all__ = ["ElectionConformance"]

BAD_RESOURCE_IDS: list[object] = [
    "",
    "a/b",
    "tab\there",
    "nul\x00",
    "del\x7f",
    "x" * 257,
    None,
    42,
    b"bytes",
]


class InjectedError(ElectionError):
    """The error the suite injects through :class:`FaultyElection`."""


class ElectionConformance:
    """The checks; see the module docstring for how to run them."""

    #: The lease TTL of the factories ``open_factory`` returns, in seconds.
    ttl: float = 10.0
    #: How long a handover after ``resign()`` may take; "promptly" means well
    #: under a TTL, i.e. no lease expiry was waited for.
    handover_limit: float | None = None

    def open_factory(self, instance_id: str) -> AbstractAsyncContextManager[Factory]:
        """Open a factory for ``instance_id``; all factories of a test share a backend."""
        raise NotImplementedError

    async def force_loss(self, factory: Factory, election: Election) -> None:
        """End ``election``'s term in the backend without telling it."""
        raise NotImplementedError

    async def cut_off(self, factory: Factory) -> None:
        """Make the backend unreachable from ``factory`` (its calls fail fast,
        as when the server refuses connections) until :meth:`reconnect`."""
        raise NotImplementedError

    async def reconnect(self, factory: Factory) -> None:
        """Undo :meth:`cut_off`."""
        raise NotImplementedError

    # -- helpers ----------------------------------------------------------------------

    @property
    def _handover_limit(self) -> float:
        return self.handover_limit if self.handover_limit is not None else self.ttl / 3

    @asynccontextmanager
    async def factories(self, *instance_ids: str) -> AsyncIterator[list[Factory]]:
        async with AsyncExitStack() as stack:
            yield [await stack.enter_async_context(self.open_factory(i)) for i in instance_ids]

    async def wait_until_leader(self, election: Election, expected: str | None) -> None:
        with trio.fail_after(self.ttl * 3):
            while await election.leader() != expected:
                await trio.sleep(self.ttl / 50)

    # -- await_mastership -------------------------------------------------------------

    async def test_await_mastership(self) -> None:
        async with self.factories("a") as (fa,):
            election = await fa.new_election("res")
            assert not election.is_master
            assert election.fencing_token is None
            await election.await_mastership()
            assert election.is_master
            assert isinstance(election.fencing_token, int)
            assert await election.leader() == "a"

    async def test_await_mastership_is_idempotent(self) -> None:
        async with self.factories("a") as (fa,):
            election = await fa.new_election("res")
            await election.await_mastership()
            token = election.fencing_token
            with trio.fail_after(self._handover_limit):
                await election.await_mastership()
            assert election.is_master
            assert election.fencing_token == token

    async def test_await_cancelled_leaves_no_candidacy(self) -> None:
        async with self.factories("a", "b") as (fa, fb):
            ea, eb = await fa.new_election("res"), await fb.new_election("res")
            await ea.await_mastership()
            with trio.move_on_after(self.ttl / 10) as waited:
                await eb.await_mastership()
            assert waited.cancelled_caught
            assert not eb.is_master
            await ea.resign()
            # Had b's candidacy survived the cancellation, it would now lead.
            await self.wait_until_leader(ea, None)
            assert not eb.is_master

    async def test_await_deadline(self) -> None:
        async with self.factories("a", "b") as (fa, fb):
            ea, eb = await fa.new_election("res"), await fb.new_election("res")
            await ea.await_mastership()
            with pytest.raises(trio.TooSlowError):
                with trio.fail_after(self.ttl / 10):
                    await eb.await_mastership()
            assert ea.is_master and not eb.is_master

    async def test_await_injected_error(self) -> None:
        async with self.factories("a") as (fa,):
            election = FaultyElection(await fa.new_election("res"))
            election.inject("await_mastership", InjectedError("await"))
            with pytest.raises(InjectedError):
                await election.await_mastership()
            assert not election.is_master
            election.inject("await_mastership", None)
            await election.await_mastership()
            assert election.is_master

    async def test_await_blocked_then_released(self) -> None:
        async with self.factories("a") as (fa,):
            election = FaultyElection(await fa.new_election("res"))
            election.block_await()
            with trio.move_on_after(self.ttl / 10) as waited:
                await election.await_mastership()
            assert waited.cancelled_caught and not election.is_master
            async with trio.open_nursery() as nursery:
                nursery.start_soon(election.await_mastership)
                await trio.sleep(self.ttl / 20)
                election.release_await()
            assert election.is_master

    # -- with_mastership ------------------------------------------------------------

    async def test_with_mastership_when_master(self) -> None:
        async with self.factories("a") as (fa,):
            election = await fa.new_election("res")
            await election.await_mastership()
            async with election.with_mastership() as scope:
                assert not scope.cancel_called
                assert trio.current_time() < scope.deadline < math.inf
                await trio.sleep(self.ttl / 10)
            assert not scope.cancelled_caught
            assert election.is_master

    async def test_with_mastership_when_not_master(self) -> None:
        async with self.factories("a") as (fa,):
            election = await fa.new_election("res")
            reached = False
            async with election.with_mastership() as scope:
                await trio.lowlevel.checkpoint()
                reached = True
            assert scope.cancelled_caught
            assert not reached

    async def test_with_mastership_parent_cancelled(self) -> None:
        async with self.factories("a") as (fa,):
            election = await fa.new_election("res")
            await election.await_mastership()
            with trio.CancelScope() as parent:
                async with election.with_mastership() as scope:
                    parent.cancel()
                    await trio.sleep_forever()
            assert parent.cancelled_caught
            assert not scope.cancelled_caught
            assert election.is_master

    async def test_with_mastership_injected_error(self) -> None:
        async with self.factories("a") as (fa,):
            election = FaultyElection(await fa.new_election("res"))
            await election.await_mastership()
            election.inject("with_mastership", InjectedError("with"))
            with pytest.raises(InjectedError):
                async with election.with_mastership():
                    pass
            assert election.is_master

    async def test_several_scopes_at_once(self) -> None:
        async with self.factories("a") as (fa,):
            election = await fa.new_election("res")
            await election.await_mastership()
            scopes: list[trio.CancelScope] = []

            async def guarded() -> None:
                async with election.with_mastership() as scope:
                    scopes.append(scope)
                    await trio.sleep_forever()

            async with trio.open_nursery() as nursery:
                for _ in range(3):
                    nursery.start_soon(guarded)
                await trio.sleep(self.ttl / 20)
                assert len(scopes) == 3
                await election.resign()
            assert all(scope.cancelled_caught for scope in scopes)

    async def test_scope_deadline_follows_renewals(self) -> None:
        async with self.factories("a") as (fa,):
            election = await fa.new_election("res")
            await election.await_mastership()
            async with election.with_mastership() as scope:
                first_deadline = scope.deadline
                assert first_deadline <= trio.current_time() + self.ttl
                await trio.sleep(self.ttl * 0.9)
                # Renewals pushed the deadline on; the term outlived one TTL.
                assert scope.deadline > first_deadline
                await trio.sleep(self.ttl * 0.3)
            assert not scope.cancelled_caught
            assert election.is_master

    # -- resign -----------------------------------------------------------------------

    async def test_resign_when_master(self) -> None:
        async with self.factories("a") as (fa,):
            election = await fa.new_election("res")
            await election.await_mastership()
            async with election.with_mastership() as scope:
                await election.resign()
                assert not election.is_master
                assert election.fencing_token is None
                await trio.lowlevel.checkpoint()
            assert scope.cancelled_caught
            assert await election.leader() is None

    async def test_resign_when_not_master(self) -> None:
        async with self.factories("a") as (fa,):
            election = await fa.new_election("res")
            await election.resign()
            await election.resign()
            assert not election.is_master

    @pytest.mark.parametrize("method", ["resign", "close"])
    async def test_failed_resign_or_close_keeps_scope(self, method: Method) -> None:
        async with self.factories("a") as (fa,):
            election = FaultyElection(await fa.new_election("res"))
            await election.await_mastership()
            election.inject(method, InjectedError(method))
            async with election.with_mastership() as scope:
                with pytest.raises(InjectedError):
                    await getattr(election, method)()
                await trio.sleep(self.ttl / 20)
            assert not scope.cancelled_caught
            assert election.is_master

    async def test_can_campaign_again_after_resign(self) -> None:
        async with self.factories("a") as (fa,):
            election = await fa.new_election("res")
            for _ in range(10):
                await election.await_mastership()
                async with election.with_mastership() as scope:
                    await election.resign()
                    with trio.fail_after(1):
                        await trio.sleep_forever()
                assert scope.cancelled_caught

    # -- close ------------------------------------------------------------------------

    async def test_close_when_master(self) -> None:
        async with self.factories("a", "b") as (fa, fb):
            ea, eb = await fa.new_election("res"), await fb.new_election("res")
            await ea.await_mastership()
            async with ea.with_mastership() as scope:
                await ea.close()
                await trio.lowlevel.checkpoint()
            assert scope.cancelled_caught
            await ea.close()  # idempotent
            with pytest.raises(ElectionClosedError):
                await ea.await_mastership()
            with pytest.raises(ElectionClosedError):
                await ea.resign()
            with pytest.raises(ElectionClosedError):
                async with ea.with_mastership():
                    pass
            with pytest.raises(ElectionClosedError):
                await ea.leader()
            with trio.fail_after(self._handover_limit):
                await eb.await_mastership()

    async def test_close_when_not_master(self) -> None:
        async with self.factories("a") as (fa,):
            election = await fa.new_election("res")
            await election.close()
            with pytest.raises(ElectionClosedError):
                await election.await_mastership()
            # The resource id is free again in this factory.
            again = await fa.new_election("res")
            await again.await_mastership()
            assert again.is_master

    async def test_close_cancels_a_waiting_campaign(self) -> None:
        async with self.factories("a", "b") as (fa, fb):
            ea, eb = await fa.new_election("res"), await fb.new_election("res")
            await ea.await_mastership()
            outcome: list[BaseException] = []

            async def campaign() -> None:
                try:
                    await eb.await_mastership()
                except ElectionClosedError as exc:
                    outcome.append(exc)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(campaign)
                await trio.sleep(self.ttl / 20)
                await eb.close()
            assert len(outcome) == 1
            await ea.resign()
            await self.wait_until_leader(ea, None)

    async def test_async_with_closes(self) -> None:
        async with self.factories("a") as (fa,):
            async with await fa.new_election("res") as election:
                await election.await_mastership()
            with pytest.raises(ElectionClosedError):
                await election.await_mastership()

    async def test_closing_the_factory_closes_its_elections(self) -> None:
        async with self.factories("b") as (fb,):
            eb = await fb.new_election("res")
            async with self.open_factory("a") as fa:
                ea = await fa.new_election("res")
                await ea.await_mastership()
                scope_holder: list[trio.CancelScope] = []
                async with trio.open_nursery() as nursery:

                    async def guarded() -> None:
                        async with ea.with_mastership() as scope:
                            scope_holder.append(scope)
                            await trio.sleep_forever()

                    nursery.start_soon(guarded)
                    await trio.sleep(self.ttl / 20)
                    nursery.cancel_scope.cancel()
            with pytest.raises(ElectionClosedError):
                await ea.await_mastership()
            with pytest.raises(ElectionClosedError):
                await fa.new_election("other")
            with trio.fail_after(self._handover_limit):
                await eb.await_mastership()

    async def test_closing_a_factory_hands_every_resource_over(self) -> None:
        """Closing releases every term (in batches, on some backends) and
        every waiting candidacy: the others take all of them over promptly."""
        resources = [f"res{i}" for i in range(40)]
        async with self.factories("b") as (fb,), trio.open_nursery() as nursery:
            waiting = [await fb.new_election(r) for r in resources]
            async with self.open_factory("a") as fa:
                held = [await fa.new_election(r) for r in resources[:30]]
                for election in held:
                    await election.await_mastership()
                for election in waiting:
                    nursery.start_soon(election.await_mastership)
                await trio.sleep(self.ttl / 20)  # queued behind a, where held
                assert sum(e.is_master for e in waiting) == 10
                closing = trio.current_time()
            assert not any(e.is_master for e in held)
            with trio.fail_after(self._handover_limit):
                while not all(e.is_master for e in waiting):
                    await trio.sleep(self.ttl / 100)
            took = trio.current_time() - closing
            assert took < self._handover_limit, took
            for election in held:
                with pytest.raises(ElectionClosedError):
                    await election.await_mastership()

    # -- several instances and resources ------------------------------------------

    async def test_second_instance_waits_then_takes_over_promptly(self) -> None:
        async with self.factories("a", "b") as (fa, fb):
            ea, eb = await fa.new_election("res"), await fb.new_election("res")
            await ea.await_mastership()
            won_at: list[float] = []

            async def campaign() -> None:
                await eb.await_mastership()
                won_at.append(trio.current_time())

            async with trio.open_nursery() as nursery:
                nursery.start_soon(campaign)
                await trio.sleep(self.ttl * 0.6)  # across a renewal: b keeps waiting
                assert not won_at and not eb.is_master
                assert await eb.leader() == "a"
                resigned_at = trio.current_time()
                await ea.resign()
            assert eb.is_master and not ea.is_master
            assert won_at[0] - resigned_at < self._handover_limit
            assert await ea.leader() == "b"

    async def test_resources_are_independent(self) -> None:
        async with self.factories("a", "b") as (fa, fb):
            ea1, ea2 = await fa.new_election("one"), await fa.new_election("two")
            eb1, eb2 = await fb.new_election("one"), await fb.new_election("two")
            await ea1.await_mastership()
            await eb2.await_mastership()
            assert ea1.is_master and eb2.is_master
            assert not ea2.is_master and not eb1.is_master
            assert await ea2.leader() == "b"
            assert await eb1.leader() == "a"
            await ea1.resign()
            assert eb2.is_master
            with trio.fail_after(self._handover_limit):
                await eb1.await_mastership()
            assert eb1.is_master and eb2.is_master and not ea2.is_master

    async def test_one_instance_owns_many_resources(self) -> None:
        async with self.factories("a") as (fa,):
            elections = [await fa.new_election(f"res-{i}") for i in range(20)]
            for election in elections:
                await election.await_mastership()
            await trio.sleep(self.ttl * 0.7)
            assert all(e.is_master for e in elections)

    async def test_second_election_for_same_resource_in_one_factory(self) -> None:
        async with self.factories("a") as (fa,):
            await fa.new_election("res")
            with pytest.raises(ElectionError, match="res"):
                await fa.new_election("res")

    async def test_unexpected_loss_cancels_every_scope(self) -> None:
        async with self.factories("a", "b") as (fa, fb):
            ea, eb = await fa.new_election("res"), await fb.new_election("res")
            await ea.await_mastership()
            scopes: list[trio.CancelScope] = []

            async def guarded() -> None:
                async with ea.with_mastership() as scope:
                    scopes.append(scope)
                    await trio.sleep_forever()

            with trio.fail_after(self.ttl * 2):
                async with trio.open_nursery() as nursery:
                    for _ in range(2):
                        nursery.start_soon(guarded)
                    await trio.sleep(self.ttl / 20)
                    await self.force_loss(fa, ea)
            assert len(scopes) == 2 and all(s.cancelled_caught for s in scopes)
            assert not ea.is_master
            await eb.await_mastership()
            assert eb.is_master

    async def test_fencing_tokens_strictly_increase(self) -> None:
        async with self.factories("a", "b") as (fa, fb):
            elections = [await fa.new_election("res"), await fb.new_election("res")]
            tokens: list[int] = []
            for round_number in range(6):
                election = elections[round_number % 2]
                await election.await_mastership()
                assert election.fencing_token is not None
                tokens.append(election.fencing_token)
                await election.resign()
            assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens)

    async def test_tokens_of_one_instance_strictly_increase(self) -> None:
        """Across resigns and losses alike, no term of an instance reuses a token."""
        async with self.factories("a") as (fa,):
            election = await fa.new_election("res")
            tokens: list[int] = []
            for round_number in range(4):
                await election.await_mastership()
                assert election.fencing_token is not None
                tokens.append(election.fencing_token)
                if round_number % 2:
                    await election.resign()
                else:
                    async with election.with_mastership() as scope:
                        await self.force_loss(fa, election)
                        with trio.fail_after(self.ttl):
                            await trio.sleep_forever()
                    assert scope.cancelled_caught
            assert all(x < y for x, y in itertools.pairwise(tokens)), tokens

    async def test_never_two_masters(self) -> None:
        """Three instances contend; guarded intervals never overlap."""
        intervals: list[tuple[float, float, int]] = []
        running: set[str] = set()

        async def contender(factory: Factory, rounds: int) -> None:
            election = await factory.new_election("res")
            for _ in range(rounds):
                await election.await_mastership()
                token = election.fencing_token
                assert token is not None
                async with election.with_mastership():
                    assert not running, f"{factory.instance_id} overlaps {running}"
                    running.add(factory.instance_id)
                    start = trio.current_time()
                    await trio.sleep(self.ttl / 50)
                    running.discard(factory.instance_id)
                    intervals.append((start, trio.current_time(), token))
                await election.resign()

        async with self.factories("a", "b", "c") as factories:
            with trio.fail_after(self.ttl * 10):
                async with trio.open_nursery() as nursery:
                    for factory in factories:
                        nursery.start_soon(contender, factory, 4)
        intervals.sort()
        assert len(intervals) == 12
        for (_, end, token), (start, _, next_token) in itertools.pairwise(intervals):
            assert end <= start and token < next_token

    # -- leader() and observe() -----------------------------------------------------

    async def test_leader_follows_changes(self) -> None:
        async with self.factories("a", "b") as (fa, fb):
            ea, eb = await fa.new_election("res"), await fb.new_election("res")
            assert await ea.leader() is None
            await ea.await_mastership()
            assert await eb.leader() == "a"
            async with trio.open_nursery() as nursery:
                nursery.start_soon(eb.await_mastership)
                await trio.sleep(self.ttl / 20)
                await ea.resign()
            assert await ea.leader() == "b"
            await eb.resign()
            await self.wait_until_leader(ea, None)

    async def test_observe_reports_every_change(self) -> None:
        async with self.factories("a", "b", "c") as (fa, fb, fc):
            ea, eb = await fa.new_election("res"), await fb.new_election("res")
            ec = await fc.new_election("res")
            seen: list[str | None] = []

            async def watch(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
                async with ec.observe() as changes:
                    task_status.started()
                    async for leader in changes:
                        seen.append(leader)
                        if leader == "b":
                            return

            with trio.fail_after(self.ttl * 3):
                async with trio.open_nursery() as nursery:
                    await nursery.start(watch)
                    await ea.await_mastership()
                    nursery.start_soon(eb.await_mastership)
                    await trio.sleep(self.ttl / 20)
                    await ea.resign()
            # a -> b directly (queued), or a -> None -> b (key free for a moment).
            assert seen[-2:] in (["a", "b"], [None, "b"])
            assert "a" in seen and seen[-1] == "b"
            assert all(x != y for x, y in itertools.pairwise(seen))
            await eb.resign()

    async def test_observe_is_never_stale(self) -> None:
        """A consumer busy between iterations may miss intermediate values, but
        the next value after a change is at least as new as that change."""
        async with self.factories("a", "b") as (fa, fb):
            ea, eb = await fa.new_election("res"), await fb.new_election("res")
            async with eb.observe() as changes:
                with trio.fail_after(self._handover_limit):
                    assert await changes.__anext__() is None
                await ea.await_mastership()
                await trio.sleep(self.ttl / 10)  # busy while the change happens
                with trio.fail_after(self._handover_limit):
                    assert await changes.__anext__() == "a"
                await ea.resign()
                await eb.await_mastership()
                await trio.sleep(self.ttl / 10)
                with trio.fail_after(self._handover_limit):
                    latest = await changes.__anext__()
                    while latest is None:  # a -> None -> b where the key is free a moment
                        latest = await changes.__anext__()
                assert latest == "b"

    async def test_observe_starts_with_none_when_nobody_leads(self) -> None:
        async with self.factories("a") as (fa,):
            election = await fa.new_election("res")
            async with election.observe() as changes:
                with trio.fail_after(self.ttl):
                    assert await changes.__anext__() is None

    # -- nothing left behind -------------------------------------------------------

    async def test_failed_release_is_retried_until_confirmed(self) -> None:
        """A resign the backend never heard of is retried once it is reachable:
        the waiting instance takes over within a renewal interval, while the
        resigned instance's session (its other term) lives on."""
        async with self.factories("a", "b") as (fa, fb):
            ea, eb = await fa.new_election("res"), await fb.new_election("res")
            keeper = await fa.new_election("keeper")
            await ea.await_mastership()
            await keeper.await_mastership()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(eb.await_mastership)
                await trio.sleep(self.ttl / 20)
                await self.cut_off(fa)
                with trio.fail_after(self.ttl / 2):
                    await ea.resign()  # the term ends locally; the release fails
                assert not ea.is_master
                await trio.sleep(self.ttl / 20)
                await self.reconnect(fa)
                reconnected = trio.current_time()
                with trio.fail_after(self.ttl):
                    while not eb.is_master:
                        await trio.sleep(self.ttl / 100)
            took = trio.current_time() - reconnected
            assert took < self.ttl / 3 + self._handover_limit, took
            assert keeper.is_master  # a's lease never lapsed: the retry did it

    async def test_a_release_retry_never_removes_a_later_term(self) -> None:
        async with self.factories("a", "b") as (fa, fb):
            ea, eb = await fa.new_election("res"), await fb.new_election("res")
            await ea.await_mastership()
            await self.cut_off(fa)
            await ea.resign()  # fails: retried in the background
            await self.reconnect(fa)
            await ea.await_mastership()  # removes the old record first, then wins anew
            await trio.sleep(self.ttl / 2)  # the old term's retries would have run
            assert ea.is_master
            assert await eb.leader() == "a"

    async def test_withdrawal_of_a_cancelled_campaign_is_retried(self) -> None:
        async with self.factories("a", "b", "c") as (fa, fb, fc):
            ea, eb = await fa.new_election("res"), await fb.new_election("res")
            ec = await fc.new_election("res")
            await ea.await_mastership()
            with trio.move_on_after(self.ttl / 10):
                try:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(eb.await_mastership)  # queued behind a
                        await trio.sleep(self.ttl / 20)
                        await self.cut_off(fb)  # then cancelled (or failed) while cut off
                except* MechanismUnavailableError:
                    pass
            await self.reconnect(fb)
            await trio.sleep(self.ttl / 3 + self._handover_limit)
            # b's candidacy is gone: when a resigns, nobody but a waiting c leads.
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ec.await_mastership)
                await trio.sleep(self.ttl / 20)
                await ea.resign()
                with trio.fail_after(self._handover_limit):
                    while not ec.is_master:
                        await trio.sleep(self.ttl / 100)
            assert await ea.leader() == "c"
            assert not eb.is_master

    async def test_unreachable_backend_raises_mechanism_unavailable(self) -> None:
        async with self.factories("a", "b") as (fa, fb):
            ea, eb = await fa.new_election("res"), await fb.new_election("res")
            await eb.await_mastership()
            await self.cut_off(fa)
            try:
                for call in (ea.leader, ea.await_mastership):
                    with trio.fail_after(self.ttl * 2), pytest.raises(MechanismUnavailableError):
                        await call()
            finally:
                await self.reconnect(fa)
            assert not ea.is_master
            with trio.fail_after(self.ttl):
                assert await ea.leader() == "b"

    # -- membership -------------------------------------------------------------------

    async def wait_for_members(self, factory: Factory, expected: set[str], limit: float) -> None:
        with trio.fail_after(limit):
            while await factory.members() != expected:
                await trio.sleep(self.ttl / 50)

    async def test_members_are_the_instances_that_joined(self) -> None:
        async with self.factories("a", "b", "c") as (fa, fb, fc):
            assert "a" in await fa.members()
            await fb.members()
            await (await fc.new_election("res")).await_mastership()  # campaigning joins too
            await self.wait_for_members(fa, {"a", "b", "c"}, self._handover_limit)
            assert await fc.members() == {"a", "b", "c"}

    async def test_reading_leaders_does_not_join(self) -> None:
        async with self.factories("a", "reader") as (fa, reader):
            await fa.members()
            assert await (await reader.new_election("res")).leader() is None
            await trio.sleep(self.ttl / 10)
            assert await fa.members() == {"a"}

    async def test_a_closed_member_leaves_at_once(self) -> None:
        async with self.factories("a") as (fa,):
            async with self.open_factory("b") as fb:
                await fb.members()
                await self.wait_for_members(fa, {"a", "b"}, self._handover_limit)
            await self.wait_for_members(fa, {"a"}, self._handover_limit)

    async def test_a_cut_off_member_leaves_within_a_ttl_and_comes_back(self) -> None:
        async with self.factories("a", "b") as (fa, fb):
            await fb.members()
            await self.wait_for_members(fa, {"a", "b"}, self._handover_limit)
            await self.cut_off(fb)
            try:
                await self.wait_for_members(fa, {"a"}, self.ttl + 1)
            finally:
                await self.reconnect(fb)
            await self.wait_for_members(fa, {"a", "b"}, self.ttl)

    async def test_observe_members_follows_joins_and_leaves(self) -> None:
        async with self.factories("a") as (fa,):
            async with fa.observe_members() as changes:

                async def until(expected: set[str]) -> None:
                    with trio.fail_after(self._handover_limit):
                        async for members in changes:
                            if members == expected:
                                return

                await until({"a"})
                async with self.open_factory("b") as fb:
                    await fb.members()
                    await until({"a", "b"})
                    await trio.sleep(self.ttl / 10)  # busy: changes coalesce, none is lost
                await until({"a"})

    # -- bad input ----------------------------------------------------------------

    @pytest.mark.parametrize("bad_id", BAD_RESOURCE_IDS, ids=repr)
    async def test_bad_resource_id_rejected(self, bad_id: object) -> None:
        async with self.factories("a", "b") as (fa, fb):
            with pytest.raises(InvalidResourceIdError) as caught:
                await fa.new_election(bad_id)  # type: ignore[arg-type]
            assert repr(bad_id)[:20] in str(caught.value) or str(bad_id)[:20] in str(caught.value)
            assert isinstance(caught.value, ValueError)
            # Nothing half-done: the factory still works and nobody leads.
            probe = await fb.new_election("probe")
            assert await probe.leader() is None
            election = await fa.new_election("probe")
            await election.await_mastership()
            assert await probe.leader() == "a"

    async def test_use_after_close_raises(self) -> None:
        async with self.factories("a") as (fa,):
            election = await fa.new_election("res")
            await election.close()
            for call in (election.await_mastership, election.resign, election.leader):
                with pytest.raises(ElectionClosedError, match="res"):
                    await call()
            with pytest.raises(ElectionClosedError):
                async with election.observe():
                    pass
