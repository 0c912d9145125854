"""The RESP client on its own: pipelining, cancellation, failures, scripts, parsers."""

from __future__ import annotations

import pytest
import trio

from election2.mechanisms.redis import _resp
from election2.mechanisms.redis._resp import (
    ConnectionLostError,
    PythonParser,
    RedisClient,
    ReplyError,
    encode,
)
from tests.redis.conftest import RedisNodeProcess


async def test_concurrent_calls_get_their_own_replies(
    redis3: list[RedisNodeProcess], prefix: str
) -> None:
    async with RedisClient("127.0.0.1", redis3[0].port) as client:
        got: dict[int, object] = {}

        async def one(i: int) -> None:
            await client.execute("SET", f"{prefix}/{i}", i)
            got[i] = await client.get(f"{prefix}/{i}")

        async with trio.open_nursery() as nursery:
            for i in range(2000):
                nursery.start_soon(one, i)
        assert got == {i: str(i) for i in range(2000)}


async def test_a_cancelled_call_leaves_the_stream_in_step(
    redis3: list[RedisNodeProcess], prefix: str
) -> None:
    """A blocked command is given up; the call queued behind it on the same
    connection still gets its own reply, and later calls use a new connection."""
    async with RedisClient("127.0.0.1", redis3[0].port) as client:
        await client.execute("SET", f"{prefix}/k", "v")
        got: list[object] = []

        async def queued() -> None:
            got.append(await client.get(f"{prefix}/k"))

        with trio.move_on_after(0.1) as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.execute, "BLPOP", f"{prefix}/empty", "0.3")
                await trio.sleep(0.01)
                nursery.start_soon(queued)
                await trio.sleep_forever()
        assert scope.cancelled_caught and got == []
        first = client._connection
        assert first is not None and first.retired
        assert await client.get(f"{prefix}/k") == "v"  # a new connection, at once
        assert client._connection is not first


async def test_a_lost_connection_fails_pending_calls_and_the_next_reconnects(
    redis3: list[RedisNodeProcess], prefix: str
) -> None:
    async with (
        RedisClient("127.0.0.1", redis3[0].port) as client,
        RedisClient("127.0.0.1", redis3[0].port) as killer,
    ):
        await killer.ping()
        failed: list[BaseException] = []

        async def blocked() -> None:
            try:
                await client.execute("BLPOP", f"{prefix}/empty", "5")
            except ConnectionLostError as exc:
                failed.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(blocked)
            await trio.sleep(0.1)
            await killer.execute("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        assert len(failed) == 1
        assert await client.ping() == "PONG"


async def test_error_replies_and_scripts(redis3: list[RedisNodeProcess], prefix: str) -> None:
    async with RedisClient("127.0.0.1", redis3[0].port) as client:
        with pytest.raises(ReplyError) as caught:
            await client.execute("NOSUCHCOMMAND")
        assert caught.value.code == "ERR"
        script = "return {KEYS[1], ARGV[1], 7}"
        await client.execute("SCRIPT", "FLUSH")
        assert await client.run_script(script, [f"{prefix}/k"], ["a"]) == [f"{prefix}/k", "a", 7]
        assert await client.run_script(script, [f"{prefix}/k"], ["b"]) == [f"{prefix}/k", "b", 7]


async def test_subscription(redis3: list[RedisNodeProcess], prefix: str) -> None:
    async with RedisClient("127.0.0.1", redis3[0].port) as client:
        async with client.subscribe(f"{prefix}:c") as messages:
            first = await messages.__anext__()
            assert (first.kind, first.channel) == ("subscribe", f"{prefix}:c")
            await client.execute("PUBLISH", f"{prefix}:c", "hello")
            assert await messages.__anext__() == ("message", f"{prefix}:c", "hello")


async def test_connecting_to_nothing_fails_within_the_timeout() -> None:
    from tests.servers import free_port

    async with RedisClient("127.0.0.1", free_port(), connect_timeout=0.5) as client:
        with pytest.raises(ConnectionLostError, match="connect"):
            await client.ping()


REPLIES = (
    b"+OK\r\n-ERR bad thing\r\n:42\r\n$-1\r\n$4\r\nh\xc3\xa9l\r\n*-1\r\n"
    b"*3\r\n$1\r\na\r\n*2\r\n:1\r\n:-2\r\n$0\r\n\r\n"
)


@pytest.mark.parametrize("hiredis", [False, True])
def test_parsers_agree_byte_by_byte(hiredis: bool) -> None:
    # The dev extra installs it: a missing parser is a broken setup, not a pass.
    assert _resp.HAVE_HIREDIS or not hiredis, "hiredis is missing: pip install -e '.[dev]'"
    parser = _resp.new_parser(hiredis)
    assert isinstance(parser, PythonParser) != hiredis
    replies: list[object] = []
    for byte in REPLIES:
        parser.feed(bytes([byte]))
        while (reply := parser.gets()) is not _resp.NOT_READY:
            replies.append(reply)
    error = replies.pop(1)
    assert isinstance(error, ReplyError) and error.code == "ERR"
    assert replies == ["OK", 42, None, "hél", None, ["a", [1, -2], ""]]


def test_encode() -> None:
    assert (
        encode(["SET", "k", b"v", 12]) == b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n$2\r\n12\r\n"
    )
