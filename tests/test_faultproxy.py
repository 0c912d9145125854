"""The fault proxy itself, against a small echo server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from tests.faultproxy import FaultProxy, proxies


@asynccontextmanager
async def echo_server() -> AsyncIterator[str]:
    async def echo(stream: trio.SocketStream) -> None:
        async with stream:
            try:
                async for data in stream:
                    await stream.send_all(data)
            except trio.BrokenResourceError:
                pass

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, echo, 0)
        yield f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        nursery.cancel_scope.cancel()


async def connect(proxy: FaultProxy) -> trio.SocketStream:
    return await trio.open_tcp_stream("127.0.0.1", proxy.port)


async def roundtrip(stream: trio.SocketStream, data: bytes = b"ping") -> bytes:
    await stream.send_all(data)
    return await stream.receive_some(100)


async def test_forwards_and_counts_connections() -> None:
    async with echo_server() as target, proxies([target]) as (proxy,):
        stream = await connect(proxy)
        assert await roundtrip(stream) == b"ping"
        assert proxy.connections == 1
        await stream.aclose()
        with trio.fail_after(1):
            while proxy.connections:
                await trio.sleep(0.01)


async def test_blackhole_holds_everything_until_forward() -> None:
    async with echo_server() as target, proxies([target]) as (proxy,):
        old = await connect(proxy)
        assert await roundtrip(old) == b"ping"
        proxy.blackhole()
        await old.send_all(b"held")
        with trio.move_on_after(0.3) as timed_out:
            await old.receive_some(100)
        assert timed_out.cancelled_caught
        new = await connect(proxy)  # accepted, but nothing answers
        await new.send_all(b"new")
        with trio.move_on_after(0.3) as timed_out:
            await new.receive_some(100)
        assert timed_out.cancelled_caught
        proxy.forward()
        with trio.fail_after(1):
            assert await old.receive_some(100) == b"held"
            assert await new.receive_some(100) == b"new"


async def test_silenced_connections_stay_silent_new_ones_work() -> None:
    async with echo_server() as target, proxies([target]) as (proxy,):
        old = await connect(proxy)
        assert await roundtrip(old) == b"ping"
        proxy.silence_existing()
        proxy.forward()
        await old.send_all(b"lost")
        with trio.move_on_after(0.3) as timed_out:
            await old.receive_some(100)
        assert timed_out.cancelled_caught
        new = await connect(proxy)
        with trio.fail_after(1):
            assert await roundtrip(new) == b"ping"


async def test_reset_breaks_open_connections() -> None:
    async with echo_server() as target, proxies([target]) as (proxy,):
        old = await connect(proxy)
        assert await roundtrip(old) == b"ping"
        proxy.reset()
        with pytest.raises(trio.BrokenResourceError), trio.fail_after(1):
            while True:
                await old.send_all(b"x")
                if not await old.receive_some(100):
                    raise trio.BrokenResourceError("closed")
        with trio.fail_after(1):
            assert await roundtrip(await connect(proxy)) == b"ping"


async def test_delay_adds_latency() -> None:
    async with echo_server() as target, proxies([target]) as (proxy,):
        stream = await connect(proxy)
        proxy.delay(0.2)
        started = trio.current_time()
        assert await roundtrip(stream) == b"ping"
        took = trio.current_time() - started
        assert 0.4 <= took < 1.0  # held once each way
        proxy.forward()
        started = trio.current_time()
        await roundtrip(stream)
        assert trio.current_time() - started < 0.1


async def test_refuse_fails_new_connections_fast_until_forward() -> None:
    async with echo_server() as target, proxies([target]) as (proxy,):
        proxy.refuse()
        stream = await connect(proxy)
        with trio.fail_after(1), pytest.raises(trio.BrokenResourceError):
            await stream.send_all(b"x")
            if not await stream.receive_some(100):
                raise trio.BrokenResourceError("closed")
        proxy.forward()
        with trio.fail_after(1):
            assert await roundtrip(await connect(proxy)) == b"ping"
