"""rediss:// — TLS to every node, with a private CA."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import election2
from election2 import MechanismUnavailableError
from tests.redis.conftest import RedisNodeProcess, start_nodes
from tests.servers import killed_after, make_certificates


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[list[RedisNodeProcess], dict[str, Path]]]:
    certs = make_certificates(tmp_path)
    tls_args = (
        "--tls-port", "PORT",
        "--tls-cert-file", str(certs["server"]),
        "--tls-key-file", str(certs["server-key"]),
        "--tls-ca-cert-file", str(certs["ca"]),
        "--tls-auth-clients", "no",
    )  # fmt: skip
    with killed_after(start_nodes(tmp_path, 3, *tls_args)) as nodes:
        yield nodes, certs


async def test_rediss_with_ca(
    tls_redis: tuple[list[RedisNodeProcess], dict[str, Path]], prefix: str
) -> None:
    nodes, certs = tls_redis
    hosts = ",".join(node.endpoint for node in nodes)
    url = f"rediss://{hosts}/{prefix}?ttl=2&ca={certs['ca']}"
    async with election2.open_factory(url, instance_id="a") as factory:
        election = await factory.new_election("job")
        await election.await_mastership()
        assert await election.leader() == "a"


async def test_rediss_without_the_ca_is_refused(
    tls_redis: tuple[list[RedisNodeProcess], dict[str, Path]], prefix: str
) -> None:
    nodes, _ = tls_redis
    hosts = ",".join(node.endpoint for node in nodes)
    with pytest.raises(MechanismUnavailableError, match=nodes[0].endpoint):
        async with election2.open_factory(f"rediss://{hosts}/{prefix}?ttl=2"):
            pass
