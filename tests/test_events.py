"""Events and logs of every transition, on the memory mechanism (mock clock)."""

from __future__ import annotations

import logging

import pytest
import trio

from election2 import ElectionEvent
from election2.mechanisms.memory import MemoryBackend

pytestmark = pytest.mark.autojump_clock
TTL = 10.0  # the ttl of the `backend` fixture


def messages(caplog: pytest.LogCaptureFixture, level: int = logging.INFO) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level]


async def test_acquire_resign_and_close_are_logged_with_instance_and_token(
    backend: MemoryBackend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="election2")
    async with backend.open_factory("a") as fa:
        election = await fa.new_election("job")
        await election.await_mastership()
        await election.resign()
        await election.await_mastership()
        await election.close()
    info = messages(caplog)
    assert "a: 'job' acquired (token 1) after 0.000 s" in info
    assert "a: 'job' resigned (token 1)" in info
    assert "a: 'job' acquired (token 2) after 0.000 s" in info
    assert "a: 'job' closed (token 2)" in info
    assert "a: 'job' campaigning" in messages(caplog, logging.DEBUG)


async def test_loss_is_logged_with_reason_and_time_left(
    backend: MemoryBackend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="election2")
    async with backend.open_factory("a") as fa:
        election = await fa.new_election("job")
        await election.await_mastership()
        backend._withdraw("job", "a")  # an operator deletes the candidacy
        await trio.sleep(fa.renew_interval + 0.1)
        assert not election.is_master
        await election.await_mastership()
        backend.partition("a")
        await trio.sleep(TTL * 1.5)
    lost = [m for m in messages(caplog) if " lost " in m]
    assert lost[0].startswith("a: 'job' lost (token 1): refused by the backend")
    assert "s left to the local deadline" in lost[0]
    assert lost[1].startswith(
        "a: 'job' lost (token 2): backend unreachable past the local deadline; "
        "the local deadline passed"
    )


async def test_renewal_trouble_is_rate_limited_and_recovery_logged(
    backend: MemoryBackend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="election2")
    async with backend.open_factory("a") as fa:
        backend.partition("a")
        await trio.sleep(60)  # a failure every ttl/10: 60 retries
        backend.heal("a")
        await trio.sleep(fa.renew_interval)
    warnings = messages(caplog, logging.WARNING)
    assert warnings[0].startswith("a: renewal failed, retrying: memory backend unreachable")
    summaries = [w for w in warnings if "still failing" in w]
    assert 4 <= len(summaries) <= 6  # one every 10 s, not one per retry
    assert warnings[-1].startswith("a: renewals recovered after ")
    assert len(warnings) == 1 + len(summaries) + 1


async def test_listeners_get_every_event(backend: MemoryBackend) -> None:
    events: list[ElectionEvent] = []
    async with backend.open_factory("a") as fa, backend.open_factory("b") as fb:
        fa.add_listener(events.append)

        def broken(event: ElectionEvent) -> None:
            raise RuntimeError("a broken listener changes nothing")

        fa.add_listener(broken)
        ea, eb = await fa.new_election("job"), await fb.new_election("job")
        await ea.await_mastership()
        await trio.sleep(fa.renew_interval * 1.5)
        with trio.move_on_after(1):
            await ea.await_mastership()  # idempotent: no events
        await ea.resign()
        await eb.await_mastership()
        with trio.move_on_after(1):
            await ea.await_mastership()  # waits behind b, then cancelled
        fa.remove_listener(events.append)
        await fa.new_election("other")
    kinds = [e.kind for e in events]
    assert kinds == ["campaign", "acquired", "renewed", "resigned", "campaign", "withdrawn"]
    acquired, renewed, resigned = events[1], events[2], events[3]
    assert (acquired.resource_id, acquired.token, acquired.instance_id) == ("job", 1, "a")
    assert renewed.resource_id is None and renewed.headroom is not None
    assert renewed.headroom > TTL / 2
    assert resigned.reason == "resigned" and resigned.token == 1
    assert events[-1].reason == "cancelled"


async def test_health_follows_renewals(backend: MemoryBackend) -> None:
    async with backend.open_factory("a") as fa:
        election = await fa.new_election("job")
        await election.await_mastership()
        await trio.sleep(fa.renew_interval * 1.5)
        health = fa.health()
        assert health.healthy and health.masters == 1
        assert health.headroom is not None and health.headroom > TTL / 2
        backend.partition("a")
        await trio.sleep(fa.renew_interval + fa.retry_interval * 1.5)  # two failures
        health = fa.health()
        assert not health.healthy and "failed" in health.reason
        backend.heal("a")
        await trio.sleep(fa.retry_interval * 1.5)
        assert fa.health().healthy
    assert not fa.health().healthy


async def test_closing_a_term_past_its_deadline_reports_a_loss(backend: MemoryBackend) -> None:
    events: list[ElectionEvent] = []
    async with backend.open_factory("a") as fa:
        fa.add_listener(events.append)
        election = await fa.new_election("job")
        await election.await_mastership()
        backend.partition("a")
        async with election.with_mastership() as scope:
            await trio.sleep_forever()  # until the local deadline
        assert scope.cancelled_caught
        await election.close()  # before the renewal loop noticed
        backend.heal("a")
    ended = [e for e in events if e.kind in ("lost", "resigned")]
    assert [(e.kind, e.reason) for e in ended] == [
        ("lost", "backend unreachable past the local deadline")
    ]
