"""etcds:// — TLS to etcd with a private CA."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import election2
from election2 import MechanismUnavailableError
from tests.etcd.conftest import EtcdMember, _start_cluster
from tests.servers import killed_after, make_certificates


@pytest.fixture
def tls_etcd(tmp_path: Path) -> Iterator[tuple[EtcdMember, dict[str, Path]]]:
    certs = make_certificates(tmp_path)
    tls_args = ("--cert-file", str(certs["server"]), "--key-file", str(certs["server-key"]))
    with killed_after(_start_cluster(tmp_path, 1, *tls_args)) as (member,):
        yield member, certs


async def test_etcds_with_ca(tls_etcd: tuple[EtcdMember, dict[str, Path]], prefix: str) -> None:
    member, certs = tls_etcd
    url = f"etcds://{member.endpoint}/{prefix}?ttl=3&ca={certs['ca']}"
    async with election2.open_factory(url, instance_id="a") as factory:
        election = await factory.new_election("job")
        await election.await_mastership()
        assert await election.leader() == "a"


async def test_etcds_without_the_ca_is_refused(
    tls_etcd: tuple[EtcdMember, dict[str, Path]], prefix: str
) -> None:
    member, _ = tls_etcd
    with pytest.raises(MechanismUnavailableError, match=member.endpoint):
        async with election2.open_factory(f"etcds://{member.endpoint}/{prefix}?ttl=3"):
            pass
