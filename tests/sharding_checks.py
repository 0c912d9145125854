"""A sharded fleet in child processes, shared by the etcd and Redis tests."""

from __future__ import annotations

import logging
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from tests.cli_processes import ENV, ROOT
from tests.servers import wait_until

log = logging.getLogger("tests.sharding")


class Instance:
    """One ``tests.sharding_instance`` process and what it reported owning."""

    def __init__(self, url: str, instance_id: str, count: int) -> None:
        self.instance_id = instance_id
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.sharding_instance", url, instance_id, str(count)],
            stdout=subprocess.PIPE, cwd=ROOT, env=ENV,
        )  # fmt: skip
        assert self.process.stdout is not None
        os.set_blocking(self.process.stdout.fileno(), False)
        self.owned: set[str] = set()
        self._pending = ""

    def poll(self) -> None:
        """Read what the process printed so far (non-blocking)."""
        assert self.process.stdout is not None
        try:
            chunk = os.read(self.process.stdout.fileno(), 1 << 20).decode()
        except BlockingIOError:
            chunk = ""
        lines = (self._pending + chunk).split("\n")
        self._pending = lines.pop()
        for line in lines:
            kind, resource_id, _token, _at = line.split()
            if kind == "acquired":
                self.owned.add(resource_id)
            else:
                self.owned.discard(resource_id)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)


@contextmanager
def fleet(url: str, names: str, count: int) -> Iterator[dict[str, Instance]]:
    instances = {name: Instance(url, name, count) for name in names}
    try:
        yield instances
    finally:
        for instance in instances.values():
            if instance.process.poll() is None:
                instance.process.send_signal(signal.SIGTERM)
        for instance in instances.values():
            try:
                instance.process.wait(10)
            except subprocess.TimeoutExpired:
                instance.kill()


def balanced(instances: list[Instance], count: int) -> bool:
    for instance in instances:
        instance.poll()
    owned = [instance.owned for instance in instances]
    return (
        len(set().union(*owned)) == count
        and sum(map(len, owned)) == count
        and max(map(len, owned)) <= math.ceil(count / len(instances)) + 1
    )


def fleet_balances_recovers_and_rests(
    url: str, ttl: float, writes: Callable[[], int], *, count: int = 30
) -> None:
    """Three instances share ``count`` resources: balanced; quiet at rest
    (``writes()``, the backend's writes beyond renewals, does not grow);
    a SIGKILLed instance's resources owned again within TTL + 1 s."""
    with fleet(url, "abc", count) as instances:
        started = time.monotonic()
        wait_until(lambda: balanced(list(instances.values()), count), timeout=30, what="balance")
        log.info("3 instances balanced after %.2f s", time.monotonic() - started)
        time.sleep(ttl)  # let the last hand-offs settle
        before = writes()
        time.sleep(ttl)
        at_rest = writes() - before
        log.info("writes beyond renewals over %g s at rest: %d", ttl, at_rest)
        assert at_rest == 0
        victim = instances["c"]
        victim.poll()
        orphans = set(victim.owned)
        killed_at = time.monotonic()
        victim.kill()
        survivors = [instances["a"], instances["b"]]

        def orphans_owned() -> bool:
            for instance in survivors:
                instance.poll()
            return orphans <= survivors[0].owned | survivors[1].owned

        wait_until(orphans_owned, timeout=ttl * 3, what="the dead instance's resources")
        took = time.monotonic() - killed_at
        log.info("SIGKILL: %d owned again after %.2f s (ttl %g s)", len(orphans), took, ttl)
        assert took <= ttl + 1
        wait_until(lambda: balanced(survivors, count), timeout=ttl * 3, what="rebalance")
