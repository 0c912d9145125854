import uuid

import pytest

from election2.mechanisms.memory import MemoryBackend

pytest_plugins = ["election2.testing.pytest_plugin"]


@pytest.fixture
def prefix() -> str:
    """A fresh key prefix, so tests never see each other's keys."""
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def backend() -> MemoryBackend:
    """A fresh in-memory backend with a 10 s TTL (drive it with the mock clock)."""
    return MemoryBackend(ttl=10.0)
