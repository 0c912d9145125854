"""Redis AUTH: a password (or ACL user) for every node."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import election2
from election2 import MechanismUnavailableError
from tests.redis.conftest import RedisNodeProcess, start_nodes
from tests.servers import killed_after


@pytest.fixture
def redis_with_password(tmp_path: Path) -> Iterator[list[RedisNodeProcess]]:
    with killed_after(start_nodes(tmp_path, 3, "--requirepass", "s3cret")) as nodes:
        yield nodes


async def test_password_in_url(redis_with_password: list[RedisNodeProcess], prefix: str) -> None:
    hosts = ",".join(node.endpoint for node in redis_with_password)
    async with election2.open_factory(
        f"redis://:s3cret@{hosts}/{prefix}?ttl=2", instance_id="a"
    ) as f:
        election = await f.new_election("job")
        await election.await_mastership()
        assert await election.leader() == "a"


async def test_wrong_password_names_the_nodes(
    redis_with_password: list[RedisNodeProcess], prefix: str
) -> None:
    hosts = ",".join(node.endpoint for node in redis_with_password)
    with pytest.raises(MechanismUnavailableError) as caught:
        async with election2.open_factory(f"redis://{hosts}/{prefix}?ttl=2", password="nope"):
            pass
    for node in redis_with_password:
        assert node.endpoint in str(caught.value)
    assert "nope" not in str(caught.value)
