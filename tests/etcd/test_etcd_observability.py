"""Logs and health against a real etcd that stops answering."""

from __future__ import annotations

import logging

import pytest
import trio

import election2
from tests.etcd.conftest import EtcdMember

log = logging.getLogger("tests.etcd")
TTL = 3.0


async def test_stopped_etcd_warnings_are_rate_limited_and_health_flips(
    own_etcd: EtcdMember, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="election2")
    url = f"etcd://{own_etcd.endpoint}/{prefix}?ttl={TTL:g}"
    async with election2.open_factory(url, instance_id="a") as factory:
        assert isinstance(factory, election2.BaseFactory)
        election = await factory.new_election("job")
        await election.await_mastership()
        await trio.sleep(TTL / 2)
        assert factory.health().healthy
        own_etcd.pause()
        try:
            with trio.fail_after(TTL):
                while factory.health().healthy:
                    await trio.sleep(0.05)
            log.info("unhealthy: %s", factory.health().reason)
            await trio.sleep(11)
        finally:
            own_etcd.resume()
        with trio.fail_after(TTL * 2):
            while not factory.health().healthy:
                await trio.sleep(0.05)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    failures = [w for w in warnings if "renewal" in w and "recovered" not in w]
    log.info("%d warning lines over ~12 s of outage:\n%s", len(warnings), "\n".join(warnings))
    # The first failure, then a summary at most every 10 s: not one per retry
    # (there were ~40 retries).
    assert 2 <= len(failures) <= 3
    assert "TooSlowError" not in "".join(warnings)
    assert "no answer within" in failures[0] or "unreachable" in failures[0]
    assert any("recovered" in w for w in warnings)
    lost = [r.getMessage() for r in caplog.records if " lost " in r.getMessage()]
    assert lost and "backend unreachable past the local deadline" in lost[0]
