"""Opt-in pytest fixtures for code that uses election2 (needs pytest-trio).

Enable in a ``conftest.py``::

    pytest_plugins = ["election2.testing.pytest_plugin"]

Fixtures:

* ``memory_ttl`` - the TTL of ``memory_backend`` (10 s; override the fixture);
* ``memory_backend`` - a fresh :class:`~election2.testing.MemoryBackend`;
* ``memory_factory`` - a running factory ``"instance-a"`` on it;
* ``open_memory_factory`` - ``open_memory_factory("b")`` opens more instances.

Marker ``@pytest.mark.autojump_clock`` runs a test (or every test of a class
or module) under ``trio.testing.MockClock(autojump_threshold=0)``, like
requesting pytest-trio's ``autojump_clock`` fixture, but without changing the
test's signature - handy for suites such as the conformance suite. With the
mock clock, TTLs pass in microseconds of real time::

    @pytest.mark.autojump_clock
    async def test_failover(memory_backend, open_memory_factory):
        async with open_memory_factory("a") as a, open_memory_factory("b") as b:
            ...
            memory_backend.crash("a")
            await eb.await_mastership()   # after one TTL of virtual time
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
import trio
import trio.testing

from ..mechanisms.memory import MemoryBackend, MemoryFactory

OpenMemoryFactory = Callable[[str], AbstractAsyncContextManager[MemoryFactory]]


def _run_with_autojump_clock(
    fn: Callable[..., Any], *args: Any, clock: object = None, **kwargs: Any
) -> Any:
    return trio.run(fn, *args, clock=trio.testing.MockClock(autojump_threshold=0), **kwargs)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "autojump_clock: run under trio's MockClock(autojump_threshold=0)"
    )


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: Iterable[pytest.Item]) -> None:
    for item in items:
        function = getattr(item, "obj", None)
        if not inspect.iscoroutinefunction(function):
            continue
        if item.get_closest_marker("autojump_clock") is not None:
            # pytest-trio takes the runner of the first "trio" marker it finds.
            item.add_marker(pytest.mark.trio(run=_run_with_autojump_clock), append=False)


@pytest.fixture
def memory_ttl() -> float:
    return 10.0


@pytest.fixture
def memory_backend(memory_ttl: float) -> MemoryBackend:
    return MemoryBackend(ttl=memory_ttl)


@pytest.fixture
def open_memory_factory(memory_backend: MemoryBackend) -> OpenMemoryFactory:
    return memory_backend.open_factory


@pytest.fixture
async def memory_factory(memory_backend: MemoryBackend) -> AsyncIterator[MemoryFactory]:
    async with memory_backend.open_factory("instance-a") as factory:
        yield factory
