"""How a downstream project tests its own code with the memory mechanism.

``tests/conftest.py`` enables the plugin with
``pytest_plugins = ["election2.testing.pytest_plugin"]``. The code under test
here is a tiny worker that does guarded work while master; the test simulates
a lease expiry (a crash) in milliseconds of real time with MockClock.
"""

from __future__ import annotations

import pytest
import trio

from election2 import Factory, MechanismUnavailableError
from election2.testing import MemoryBackend
from election2.testing.pytest_plugin import OpenMemoryFactory


async def worker(factory: Factory, done: list[tuple[str, int]], batches: int) -> None:
    """The code under test: process batches, each stamped with the fencing token."""
    election = await factory.new_election("billing")
    while len(done) < batches:
        try:
            await election.await_mastership()
        except MechanismUnavailableError:
            await trio.sleep(1)  # backend unreachable: retry later
            continue
        token = election.fencing_token
        assert token is not None
        async with election.with_mastership():
            while len(done) < batches:
                await trio.sleep(1)
                done.append((factory.instance_id, token))


@pytest.mark.autojump_clock
async def test_worker_fails_over_after_lease_expiry(
    memory_backend: MemoryBackend, open_memory_factory: OpenMemoryFactory
) -> None:
    done: list[tuple[str, int]] = []
    async with open_memory_factory("a") as fa, open_memory_factory("b") as fb:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker, fa, done, 30)
            await trio.sleep(5.5)
            nursery.start_soon(worker, fb, done, 30)
            memory_backend.crash("a")  # a's renewals stop; b wins one TTL later
    started = trio.current_time()
    assert [who for who, _ in done[:5]] == ["a"] * 5
    assert {who for who, _ in done[-5:]} == {"b"}
    tokens = [token for _, token in done]
    assert tokens == sorted(tokens)
    # 30 one-second batches plus a 10 s TTL took no real time at all.
    assert started >= 30


async def test_memory_factory_fixture(memory_factory: Factory) -> None:
    election = await memory_factory.new_election("job")
    await election.await_mastership()
    assert election.is_master and memory_factory.instance_id == "instance-a"
