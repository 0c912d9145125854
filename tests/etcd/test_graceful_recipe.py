"""The documented recipe for library users: resign cleanly on SIGTERM."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.cli_processes import ENV, ROOT
from tests.etcd.conftest import EtcdMember
from tests.servers import wait_until

log = logging.getLogger("tests.recipe")
TTL = 3.0
RECIPE = ROOT / "docs" / "examples" / "graceful_service.py"


@contextmanager
def service(url: str, instance_id: str, output: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The recipe running as ``instance_id``, printing to ``output``."""
    with output.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, str(RECIPE), url, "job", instance_id], stdout=out, env=ENV
        )
    try:
        yield process
    finally:
        process.kill()
        process.wait(10)


def work_times(output: Path) -> list[float]:
    lines = output.read_text().splitlines()
    return [float(line.split()[2]) for line in lines if line.startswith("working")]


def test_sigterm_resigns_and_the_successor_starts_at_once(
    etcd_server: EtcdMember, prefix: str, tmp_path: Path
) -> None:
    url = f"etcd://{etcd_server.endpoint}/{prefix}?ttl={TTL:g}"
    out_a, out_b = tmp_path / "a.out", tmp_path / "b.out"
    with service(url, "a", out_a) as a:
        wait_until(lambda: bool(work_times(out_a)), timeout=20, what="a to work")
        with service(url, "b", out_b):
            time.sleep(1)  # b is queued behind a
            assert not work_times(out_b)
            signalled = time.monotonic()
            a.send_signal(signal.SIGTERM)
            wait_until(lambda: bool(work_times(out_b)), timeout=TTL, what="b to work")
            assert a.wait(10) == 0
    b_first = work_times(out_b)[0]
    log.info("recipe: the successor worked %.3f s after SIGTERM", b_first - signalled)
    assert "stopping on SIGTERM" in out_a.read_text()
    assert b_first - signalled < TTL / 2  # a resign, not a lease expiry
    assert max(work_times(out_a)) < b_first  # never side by side
