"""Fault checks with a master in another process, shared by the backend tests."""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

import election2
from election2 import Election
from tests.processes import Candidate

log = logging.getLogger("tests.faults")


@asynccontextmanager
async def two_candidates(url: str) -> AsyncIterator[tuple[Election, Election]]:
    """Instances "a" and "b", each with its election of resource "job"."""
    async with election2.open_factory(url, instance_id="a") as fa:
        async with election2.open_factory(url, instance_id="b") as fb:
            yield await fa.new_election("job"), await fb.new_election("job")


async def killed_master_is_replaced(url: str, ttl: float) -> float:
    """SIGKILL a master process; return how long until another instance won."""
    async with election2.open_factory(url, instance_id="survivor") as factory:
        election = await factory.new_election("job")
        candidate = Candidate(url, "job", "doomed")
        async with trio.open_nursery() as nursery:
            await nursery.start(candidate.run)
            with trio.fail_after(30):
                await candidate.wait_for("WORK")
            killed_at = time.monotonic()
            candidate.signal(signal.SIGKILL)
            with trio.fail_after(ttl + 5):
                await election.await_mastership()
            took = time.monotonic() - killed_at
            nursery.cancel_scope.cancel()
        log.info("failover after SIGKILL: %.3f s (ttl %.1f s)", took, ttl)
        await election.resign()
        return took


async def paused_master_never_works_again(url: str, ttl: float) -> tuple[float, int]:
    """SIGSTOP a master past its TTL, let another win, SIGCONT it.

    Returns the gap between the paused master's last guarded step and the
    successor's win, and the number of lines the resumed process printed.
    """
    async with election2.open_factory(url, instance_id="successor") as factory:
        election = await factory.new_election("job")
        candidate = Candidate(url, "job", "paused")
        async with trio.open_nursery() as nursery:
            await nursery.start(candidate.run)
            with trio.fail_after(30):
                _, old_token, _ = await candidate.wait_for("WORK")
            stopped_at = time.monotonic()
            candidate.signal(signal.SIGSTOP)
            with trio.fail_after(ttl + 5):
                await election.await_mastership()
            won_at = time.monotonic()
            assert election.fencing_token is not None and election.fencing_token > old_token
            candidate.signal(signal.SIGCONT)
            resumed_at = time.monotonic()
            await trio.sleep(ttl)  # let the resumed process do whatever it would
            nursery.cancel_scope.cancel()
        old_work = [
            at for kind, token, at in candidate.lines if kind == "WORK" and token == old_token
        ]
        # Guarded work under the old term ended when the process stopped...
        assert max(old_work) < stopped_at + 0.05, (max(old_work), stopped_at)
        # ...and never ran again after it resumed: the scope's deadline had passed.
        after_resume = [line for line in candidate.lines if line[2] >= resumed_at]
        assert not [line for line in after_resume if line[0] == "WORK" and line[1] == old_token]
        assert election.is_master
        log.info(
            "paused master: last old-term step %.3f s before the successor won",
            won_at - max(old_work),
        )
        return won_at - max(old_work), len(after_resume)
