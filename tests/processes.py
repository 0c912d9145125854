"""Run ``tests.candidate`` in a child process and read what it reports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent


class Candidate:
    """A child process campaigning for a resource; its lines in ``lines``."""

    def __init__(self, url: str, resource_id: str, instance_id: str) -> None:
        self.argv = [sys.executable, "-m", "tests.candidate", url, resource_id, instance_id]
        self.lines: list[tuple[str, int, float]] = []
        self.process: trio.Process | None = None
        self._new_line = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.process = await trio.lowlevel.open_process(
            self.argv, stdout=subprocess.PIPE, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}
        )
        task_status.started()
        assert self.process.stdout is not None
        buffer = b""
        try:
            async for chunk in self.process.stdout:
                buffer += chunk
                *complete, buffer = buffer.split(b"\n")
                for raw in complete:
                    kind, token, at = raw.decode().split()
                    self.lines.append((kind, int(token), float(at)))
                self._new_line.set()
                self._new_line = trio.Event()
        finally:
            with trio.CancelScope(shield=True):
                self.kill()
                await self.process.wait()

    async def wait_for(self, kind: str) -> tuple[str, int, float]:
        while True:
            for line in self.lines:
                if line[0] == kind:
                    return line
            await self._new_line.wait()

    def signal(self, signum: int) -> None:
        if self.process is not None and self.process.returncode is None:
            os.kill(self.process.pid, signum)

    def kill(self) -> None:
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGKILL)
