import uuid

import pytest

from election2.mechanisms.memory import MemoryBackend

pytest_plugins = ["election2.testing.pytest_plugin"]


@pytest.fixture
def prefix() -> str:
    """A fresh key prefix, so tests never see each other's keys."""
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def backend(memory_backend: MemoryBackend) -> MemoryBackend:
    """The plugin's fresh ``memory_backend`` (10 s TTL), under a short name."""
    return memory_backend
