"""``election2 run``: a command supervised under mastership.

The command runs in a process group of its own while this instance is master,
with ``ELECTION2_RESOURCE``, ``ELECTION2_INSTANCE`` and
``ELECTION2_FENCING_TOKEN`` in its environment. The group never outlives the
term, nor ``election2``:

* mastership about to lapse (renewals failing): SIGTERM ``kill_after`` seconds
  before the local deadline, SIGKILL at the deadline itself, which comes
  before the backend's expiry (a ``with_mastership(grace=kill_after)`` scope
  inside a plain one);
* mastership lost (the backend said so, or a resign): SIGKILL at once;
* SIGTERM, SIGINT or SIGHUP to ``election2``: passed to the group, SIGKILL
  ``kill_after`` seconds later if it is still there; once it is gone the
  election is resigned, so a successor starts at once;
* the command exits: whatever is left in its group is killed, then resign.

With ``metrics_port``, Prometheus metrics (:mod:`election2.metrics`, on a
registry of their own) and ``/healthz`` are served on that port from before
the campaign (a waiting instance exports ``election2_is_master`` 0) until
``election2`` exits.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import trio

from ._election import BaseFactory, Election, Factory, single_exception
from .errors import ConfigurationError
from .mechanisms import open_factory

__all__ = [
    "EXIT_LOST",
    "EXIT_NOT_FOUND",
    "EXIT_TIMEOUT",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "RunOptions",
    "default_kill_after",
    "run_command",
]

EXIT_USAGE = 2
EXIT_LOST = 3
EXIT_TIMEOUT = 4
EXIT_UNAVAILABLE = 5
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def default_kill_after(ttl: float) -> float:
    """A quarter of the TTL, at most 5 s: time enough to wind down, and far
    from the deadline a healthy renewal keeps pushing (it never gets closer
    than two thirds of the TTL)."""
    return min(ttl / 4, 5.0)


def say(message: str) -> None:
    print(f"election2: {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class RunOptions:
    url: str
    resource_id: str
    command: Sequence[str]
    instance_id: str | None = None
    ttl: float | None = None
    #: Give up (exit 4) if not master after this many seconds.
    timeout: float | None = None
    #: Seconds between SIGTERM and SIGKILL; None: :func:`default_kill_after`.
    kill_after: float | None = None
    #: Serve /metrics and /healthz on this port (every interface) while running.
    metrics_port: int | None = None


async def run_command(options: RunOptions) -> int:
    """Campaign, run the command while master, and return the exit status."""
    with trio.open_signal_receiver(*STOP_SIGNALS) as signals, single_exception():
        supervisor = _Supervisor(options)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(supervisor.receive_signals, signals)
            status = await supervisor.run()
            nursery.cancel_scope.cancel()
    return status


class _Supervisor:
    def __init__(self, options: RunOptions) -> None:
        self.options = options
        self.kill_after = math.inf
        #: The first stop signal received, if any.
        self.stopped_by: int | None = None
        #: Cancelled by a stop signal that arrives before the command runs.
        self.campaigning = trio.CancelScope()
        self.process: trio.Process | None = None
        self._nursery: trio.Nursery | None = None

    async def run(self) -> int:
        extra = {} if self.options.ttl is None else {"ttl": self.options.ttl}
        async with open_factory(
            self.options.url, instance_id=self.options.instance_id, **extra
        ) as factory:
            assert isinstance(factory, BaseFactory)
            self.kill_after = self._checked_kill_after(factory.ttl)
            async with (
                self._exporting_metrics(factory),
                await factory.new_election(self.options.resource_id) as election,
            ):
                if not await self._campaign(factory, election):
                    return EXIT_TIMEOUT if self.stopped_by is None else 128 + self.stopped_by
                async with trio.open_nursery() as nursery:  # kill timers
                    self._nursery = nursery
                    status = await self._supervise(election)
                    nursery.cancel_scope.cancel()
                if status != EXIT_LOST:
                    await election.resign()  # the successor starts now, not at close
                return status

    @asynccontextmanager
    async def _exporting_metrics(self, factory: BaseFactory[Any]) -> AsyncIterator[None]:
        """Serve the factory's metrics and health on ``metrics_port``, if set,
        while the block runs."""
        port = self.options.metrics_port
        if port is None:
            yield
            return
        # Imported here: prometheus-client is an optional extra, and without it
        # this first import raises the ConfigurationError that says how to get it.
        from .metrics import PrometheusMetrics, serve_metrics

        # isort: split
        from prometheus_client import CollectorRegistry

        metrics = PrometheusMetrics(CollectorRegistry())
        metrics.attach(factory)
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(
                partial(serve_metrics, port, registry=metrics.registry, health=factory.health)
            )
            say(f"serving /metrics and /healthz on 0.0.0.0:{bound}")
            try:
                yield
            finally:
                nursery.cancel_scope.cancel()

    def _checked_kill_after(self, ttl: float) -> float:
        kill_after = self.options.kill_after
        if kill_after is None:
            return default_kill_after(ttl)
        if not 0 <= kill_after < ttl / 2:
            raise ConfigurationError(
                f"--kill-after must be at least 0 and below half the TTL ({ttl / 2:g} s): "
                f"{kill_after:g}"
            )
        return kill_after

    async def _campaign(self, factory: Factory, election: Election) -> bool:
        """Wait for mastership; False after ``timeout`` or a stop signal."""
        resource_id = self.options.resource_id
        say(f"{factory.instance_id} campaigning for {resource_id!r}")
        timeout = math.inf if self.options.timeout is None else self.options.timeout
        with self.campaigning, trio.move_on_after(timeout):
            await election.await_mastership()
        if self.stopped_by is not None:
            say(f"stopped by {signal.Signals(self.stopped_by).name} while campaigning")
            return False
        if not election.is_master:
            say(f"not master of {resource_id!r} after {timeout:g} s (--timeout)")
            return False
        say(f"master of {resource_id!r} (fencing token {election.fencing_token})")
        return True

    async def _supervise(self, election: Election) -> int:
        env = {
            **os.environ,
            "ELECTION2_RESOURCE": election.resource_id,
            "ELECTION2_INSTANCE": election.instance_id,
            "ELECTION2_FENCING_TOKEN": str(election.fencing_token),
        }
        try:
            process = await trio.lowlevel.open_process(
                list(self.options.command), env=env, start_new_session=True
            )
        except OSError as exc:
            say(f"cannot run {self.options.command[0]!r}: {exc.strerror or exc}")
            return EXIT_NOT_FOUND if isinstance(exc, FileNotFoundError) else EXIT_CANNOT_EXECUTE
        self.process = process
        if self.stopped_by is not None:  # a signal came while it was starting
            self._signal_group(self.stopped_by)
            self._start_kill_timer()
        lapsing = False
        try:
            async with election.with_mastership() as term:
                async with election.with_mastership(grace=self.kill_after) as wind_down:
                    await process.wait()
                if wind_down.cancelled_caught and election.is_master:
                    lapsing = True
                    say(
                        f"mastership of {election.resource_id!r} lapses in "
                        f"{self.kill_after:g} s (renewals failing): SIGTERM to the command"
                    )
                    self._signal_group(signal.SIGTERM)
                    await process.wait()  # the outer scope kills it at the deadline
        finally:
            # Whatever is left of the group (grandchildren too) goes with it.
            with trio.CancelScope(shield=True):
                self._signal_group(signal.SIGKILL)
                await process.wait()
            self.process = None
        if term.cancelled_caught or lapsing:
            say(f"mastership of {election.resource_id!r} ended; command killed")
            return EXIT_LOST
        if self.stopped_by is not None:
            return 128 + self.stopped_by
        code = process.returncode
        assert code is not None
        return 128 - code if code < 0 else code

    def _signal_group(self, signum: int) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):  # the group is empty
                os.killpg(self.process.pid, signum)

    async def receive_signals(self, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            if self.stopped_by is None:
                self.stopped_by = signum
            if self.process is None:
                self.campaigning.cancel()
                continue
            say(f"{signal.Signals(signum).name}: passing it to the command")
            self._signal_group(signum)
            self._start_kill_timer()

    def _start_kill_timer(self) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(self._kill_later)

    async def _kill_later(self) -> None:
        await trio.sleep(self.kill_after)
        if self.process is not None and self.process.returncode is None:
            say(f"the command is still running after {self.kill_after:g} s: SIGKILL")
            self._signal_group(signal.SIGKILL)
