"""``election2 run`` against real Redis masters, in child processes."""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path

from tests.cli_processes import alive, guarded, stop, supervisor, ticks, wait_for_ticks
from tests.redis.conftest import RedisNodeProcess, url_of

log = logging.getLogger("tests.cli")
TTL = 2.0


def test_sigterm_hands_over_at_once_without_overlap(
    redis3: list[RedisNodeProcess], prefix: str, tmp_path: Path
) -> None:
    url, log_path = url_of(redis3, prefix, TTL), tmp_path / "ticks"
    grandchild = tmp_path / "grandchild"
    command_a = guarded(log_path, "--grandchild", str(grandchild))
    with supervisor("run", "--instance-id", "a", url, "job", "--", *command_a) as a:
        wait_for_ticks(log_path, "a")
        with supervisor("run", "--instance-id", "b", url, "job", "--", *guarded(log_path)):
            time.sleep(0.5)
            assert not ticks(log_path, "b")
            signalled = stop(a, signal.SIGTERM)
            assert a.wait(10) == 128 + signal.SIGTERM
            b_started = wait_for_ticks(log_path, "b", timeout=TTL)
    a_last = ticks(log_path, "a")[-1][2]
    log.info(
        "redis SIGTERM: successor's command started %.3f s after the signal (ttl %g s)",
        b_started - signalled,
        TTL,
    )
    assert a_last < b_started
    assert b_started - signalled < TTL / 2
    assert not alive(int(grandchild.read_text()))
