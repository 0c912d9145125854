"""etcd authentication: user/password, and a new token when the old one expires."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

import election2
from election2 import ConfigurationError
from election2.mechanisms.etcd import EtcdFactory
from tests.etcd.conftest import EtcdMember, _start_cluster
from tests.servers import killed_after, require_binary


@pytest.fixture
def etcd_with_auth(tmp_path: Path) -> Iterator[EtcdMember]:
    with killed_after(_start_cluster(tmp_path, 1, "--auth-token-ttl", "1")) as (member,):
        etcdctl = [require_binary("etcdctl"), f"--endpoints={member.endpoint}"]
        env = {**os.environ, "ETCDCTL_API": "3"}
        for command in (
            ["user", "add", "root:rootpw"],
            ["user", "add", "app:s3cret"],
            ["role", "add", "elections"],
            ["role", "grant-permission", "elections", "--prefix=true", "readwrite", "t-"],
            ["user", "grant-role", "app", "elections"],
            ["auth", "enable"],
        ):
            subprocess.run([*etcdctl, *command], env=env, check=True, capture_output=True)
        yield member


async def test_password_auth_and_token_renewal(etcd_with_auth: EtcdMember, prefix: str) -> None:
    url = f"etcd://app:s3cret@{etcd_with_auth.endpoint}/{prefix}?ttl=3"
    async with election2.open_factory(url, instance_id="a") as factory:
        assert isinstance(factory, EtcdFactory)
        election = await factory.new_election("job")
        await election.await_mastership()
        first_token = factory.client._token
        # Setting the password (to the same value) invalidates the user's
        # tokens at once: the renewals must authenticate again.
        subprocess.run(
            [require_binary("etcdctl"), f"--endpoints={etcd_with_auth.endpoint}",
             "--user", "root:rootpw", "user", "passwd", "app", "--interactive=false"],
            input=b"s3cret\n", env={**os.environ, "ETCDCTL_API": "3"}, check=True,
            capture_output=True,
        )  # fmt: skip
        await trio.sleep(3)
        assert election.is_master
        assert await election.leader() == "a"
        assert factory.client._token != first_token


async def test_wrong_password_is_a_clear_error(etcd_with_auth: EtcdMember, prefix: str) -> None:
    url = f"etcd://app:wrong@{etcd_with_auth.endpoint}/{prefix}?ttl=3"
    with pytest.raises(ConfigurationError, match="'app'") as caught:
        async with election2.open_factory(url, instance_id="a"):
            pass
    assert "wrong" not in str(caught.value)
