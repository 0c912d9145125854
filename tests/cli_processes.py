"""``election2`` in child processes, for the command-line tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.servers import wait_until

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def election2(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``election2 ARGS`` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "election2", *args],
        capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=60,
    )  # fmt: skip


@contextmanager
def supervisor(*args: str) -> Iterator[subprocess.Popen[str]]:
    """``election2 ARGS`` running in the background; killed afterwards."""
    process = subprocess.Popen(
        [sys.executable, "-m", "election2", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=ENV,
    )  # fmt: skip
    try:
        yield process
    finally:
        if process.poll() is None:
            process.terminate()  # election2 stops its command's group, then exits
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        process.communicate(timeout=10)


def guarded(log: Path, *options: str) -> list[str]:
    """The argv of ``tests.guarded_command`` writing to ``log``."""
    return [sys.executable, "-m", "tests.guarded_command", str(log), *options]


def ticks(log: Path, instance: str | None = None) -> list[tuple[str, int, float]]:
    """(instance, token, time) lines of a guarded command's log."""
    try:
        lines = log.read_text().splitlines()
    except FileNotFoundError:
        return []
    rows = []
    for line in lines:
        parts = line.split()
        if len(parts) == 3:
            rows.append((parts[0], int(parts[1]), float(parts[2])))
    return [row for row in rows if instance is None or row[0] == instance]


def wait_for_ticks(log: Path, instance: str, timeout: float = 20) -> float:
    """When ``instance`` first wrote to ``log``."""
    wait_until(lambda: bool(ticks(log, instance)), timeout=timeout, what=f"{instance} to run")
    return ticks(log, instance)[0][2]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead too (our sleep's parent was killed: init reaps it).
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def stop(process: subprocess.Popen[str], signum: int = signal.SIGTERM) -> float:
    """Send ``signum``; the monotonic time it was sent."""
    sent = time.monotonic()
    process.send_signal(signum)
    return sent
