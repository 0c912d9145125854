"""Fixtures: real etcd members on free loopback ports with temporary data dirs."""

from __future__ import annotations

import json
import socket
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from election2 import Factory
from election2.mechanisms.etcd import EtcdFactory
from election2.mechanisms.etcd._client import EtcdClient
from tests.servers import ServerProcess, free_port, killed_after, require_binary, wait_until

#: Our members' election timeout (heartbeats every 50 ms): a failover of the
#: etcd leader itself takes about this long.
ELECTION_TIMEOUT_MS = 500


class EtcdMember(ServerProcess):
    def __init__(self, name: str, data_dir: Path, client_port: int, peer_port: int) -> None:
        self.client_port = client_port
        self.peer_port = peer_port
        self.member_name = name
        self.data_dir = data_dir
        self.initial_cluster = f"{name}=http://127.0.0.1:{peer_port}"
        self.cluster_token = f"t-{uuid.uuid4().hex[:8]}"
        self.extra_args: list[str] = []
        super().__init__([], name=name, log_path=data_dir.parent / f"{name}.log")

    @property
    def scheme(self) -> str:
        return "https" if "--cert-file" in self.extra_args else "http"

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    def start(self) -> None:
        self.argv = [
            require_binary("etcd"),
            "--name", self.member_name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", f"{self.scheme}://127.0.0.1:{self.client_port}",
            "--advertise-client-urls", f"{self.scheme}://127.0.0.1:{self.client_port}",
            "--listen-peer-urls", f"http://127.0.0.1:{self.peer_port}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer_port}",
            "--initial-cluster", self.initial_cluster,
            "--initial-cluster-state", "new",
            "--initial-cluster-token", self.cluster_token,
            "--heartbeat-interval", "50",
            "--election-timeout", str(ELECTION_TIMEOUT_MS),
            *self.extra_args,
        ]  # fmt: skip
        super().start()

    def healthy(self) -> bool:
        if "--cert-file" in self.extra_args:
            return self._port_open()
        try:
            with urllib.request.urlopen(f"http://{self.endpoint}/health", timeout=0.5) as r:
                return bool(json.load(r).get("health") == "true")
        except (OSError, ValueError):
            return False

    def _port_open(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.client_port), timeout=0.5):
                return True
        except OSError:
            return False

    def wait_healthy(self, timeout: float = 20) -> None:
        try:
            wait_until(self.healthy, timeout=timeout, what=f"etcd {self.endpoint}")
        except TimeoutError:
            raise TimeoutError(f"etcd did not start:\n{self.log_tail()}") from None


def _start_cluster(tmp_path: Path, size: int, *extra_args: str) -> list[EtcdMember]:
    members = [
        EtcdMember(f"m{i}", tmp_path / f"m{i}", free_port(), free_port()) for i in range(size)
    ]
    for member in members:
        member.extra_args = list(extra_args)
    cluster = ",".join(f"{m.member_name}=http://127.0.0.1:{m.peer_port}" for m in members)
    token = f"t-{uuid.uuid4().hex[:8]}"
    for member in members:
        member.initial_cluster = cluster
        member.cluster_token = token
        member.start()
    for member in members:
        member.wait_healthy()
    return members


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdMember]:
    """One etcd shared by the tests that only need a working server."""
    with killed_after(_start_cluster(tmp_path_factory.mktemp("etcd"), 1)) as (member,):
        yield member


@pytest.fixture
def own_etcd(tmp_path: Path) -> Iterator[EtcdMember]:
    """A private etcd for tests that pause, stop or kill the server."""
    with killed_after(_start_cluster(tmp_path, 1)) as (member,):
        yield member


@pytest.fixture
def etcd_cluster(tmp_path: Path) -> Iterator[list[EtcdMember]]:
    """A 3-member etcd cluster."""
    with killed_after(_start_cluster(tmp_path, 3)) as members:
        yield members


def store_revision(member: EtcdMember, prefix: str) -> int:
    """etcd's store revision (every write bumps it, a keepalive does not)."""

    async def read() -> int:
        client = EtcdClient([f"http://{member.endpoint}"])
        try:
            return (await client.range_prefix(prefix))[1]
        finally:
            await client.aclose()

    return trio.run(read)


def log_requests(factory: Factory) -> list[str]:
    """The paths of the gateway requests ``factory`` makes from now on."""
    assert isinstance(factory, EtcdFactory)
    made: list[str] = []
    call = factory.client.call

    async def logged(path: str, body: Any) -> Any:
        made.append(path)
        return await call(path, body)

    factory.client.call = logged  # type: ignore[method-assign]
    return made
