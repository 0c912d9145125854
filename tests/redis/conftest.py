"""Fixtures: real redis-server processes on free loopback ports."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from election2.mechanisms.redis._resp import RedisClient
from tests.servers import ServerProcess, free_port, killed_after, require_binary, wait_until


class RedisNodeProcess(ServerProcess):
    def __init__(self, data_dir: Path, port: int, *extra_args: str) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.port = port
        # "PORT" in extra_args stands for our port (e.g. "--tls-port", "PORT");
        # with TLS the plain port is closed.
        self.tls = "--tls-port" in extra_args
        extra_args = tuple(str(port) if arg == "PORT" else arg for arg in extra_args)
        super().__init__(
            [
                require_binary("redis-server"),
                "--port",
                "0" if self.tls else str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(data_dir),
                *extra_args,
            ],
            name=f"redis-{port}",
            log_path=data_dir / "redis.log",
        )

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                if self.tls:
                    return True
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def start(self) -> None:
        super().start()
        try:
            wait_until(self.answers, timeout=10, what=self.name)
        except TimeoutError:
            raise TimeoutError(f"redis did not start:\n{self.log_tail()}") from None

    def restart(self) -> None:
        self.kill()
        self.start()


def start_nodes(tmp_path: Path, count: int, *extra_args: str) -> list[RedisNodeProcess]:
    nodes = [RedisNodeProcess(tmp_path / f"n{i}", free_port(), *extra_args) for i in range(count)]
    for node in nodes:
        node.start()
    return nodes


def url_of(nodes: list[RedisNodeProcess], prefix: str, ttl: float, query: str = "") -> str:
    hosts = ",".join(node.endpoint for node in nodes)
    return f"redis://{hosts}/{prefix}?ttl={ttl:g}{'&' + query if query else ''}"


@pytest.fixture(scope="session")
def redis3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RedisNodeProcess]]:
    """Three independent masters shared by tests that do not break them."""
    with killed_after(start_nodes(tmp_path_factory.mktemp("redis3"), 3)) as nodes:
        yield nodes


@pytest.fixture
def own_redis3(tmp_path: Path) -> Iterator[list[RedisNodeProcess]]:
    """Three private masters for tests that pause, restart or kill them."""
    with killed_after(start_nodes(tmp_path, 3)) as nodes:
        yield nodes


@pytest.fixture
def own_redis5(tmp_path: Path) -> Iterator[list[RedisNodeProcess]]:
    with killed_after(start_nodes(tmp_path, 5)) as nodes:
        yield nodes


class DirectClient(RedisClient):
    """A plain client of one node, with the few commands tests read state with."""

    async def delete(self, keys: list[str]) -> int:
        return int(await self.execute("DEL", *keys))

    async def exists(self, keys: list[str]) -> int:
        return int(await self.execute("EXISTS", *keys))

    async def zscore(self, key: str, member: str) -> float | None:
        score = await self.execute("ZSCORE", key, member)
        return None if score is None else float(score)

    async def type(self, key: str) -> str:
        return str(await self.execute("TYPE", key))

    async def pttl(self, key: str) -> int:
        return int(await self.execute("PTTL", key))

    async def info(self, section: str) -> dict[str, dict[str, str]]:
        """``INFO section`` as {name: {field: value}} (lines ``name:f=v,f=v``)."""
        parsed: dict[str, dict[str, str]] = {}
        for line in str(await self.execute("INFO", section)).splitlines():
            name, _, fields = line.partition(":")
            if fields and not line.startswith("#"):
                parsed[name] = dict(f.partition("=")[::2] for f in fields.split(","))
        return parsed


@contextlib.asynccontextmanager
async def direct(nodes: list[RedisNodeProcess]) -> AsyncIterator[list[DirectClient]]:
    """Plain clients of the nodes, to look at their state."""
    async with contextlib.AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(DirectClient("127.0.0.1", node.port)) for node in nodes
        ]
