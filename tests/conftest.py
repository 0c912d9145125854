import uuid

import pytest

pytest_plugins = ["election2.testing.pytest_plugin"]


@pytest.fixture
def prefix() -> str:
    """A fresh key prefix, so tests never see each other's keys."""
    return f"t-{uuid.uuid4().hex[:12]}"
