"""A loopback TCP fault proxy: network faults without root.

A :class:`FaultProxy` listens on a free loopback port and forwards every
connection to one server. Put one in front of each server an instance talks
to (one proxy per instance and node) and break that path alone:

* :meth:`blackhole` - a partition: existing and new connections stay open but
  nothing is forwarded either way until :meth:`forward` (then the bytes held
  up in the kernel's buffers flow again, as TCP retransmission would);
* :meth:`silence_existing` - what a NAT or load balancer dropping an idle
  stream does: the connections open now never carry another byte (not even
  after :meth:`forward`), while new connections work;
* :meth:`reset` - every open connection is closed with a TCP reset;
* :meth:`refuse` - a server that is down: open connections are reset and new
  ones closed at once, so clients fail fast instead of timing out;
* :meth:`delay` - each chunk is held for that long before it is passed on.

The proxy runs in the test's own trio nursery (``await nursery.start(proxy.run)``),
so it works for clients in this process and in child processes alike.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

import trio

import election2
from election2 import Factory

__all__ = ["FaultProxy", "ProxiedFactories", "proxies"]


def _reset_on_close(stream: trio.SocketStream) -> None:
    """Linger 0: closing the socket sends RST instead of FIN."""
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class _Link:
    """One proxied connection: the client's stream and the server's."""

    def __init__(self, client: trio.SocketStream, server: trio.SocketStream) -> None:
        self.client = client
        self.server = server
        self.silenced = False
        self.scope = trio.CancelScope()

    def reset(self) -> None:
        _reset_on_close(self.client)
        _reset_on_close(self.server)
        self.scope.cancel()


class FaultProxy:
    """Forwards ``host:port`` (loopback) to ``target``; see the module docstring."""

    def __init__(self, target: str, *, host: str = "127.0.0.1") -> None:
        self.host = host
        host, _, port = target.rpartition(":")
        self.target_host = host.strip("[]")
        self.target_port = int(port)
        self.port = 0
        self.delay_seconds = 0.0
        self._links: set[_Link] = set()
        self._refusing = False
        self._flowing = trio.Event()
        self._flowing.set()

    @property
    def endpoint(self) -> str:
        """``host:port`` for clients to connect to (IPv6 in brackets)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def connections(self) -> int:
        """How many connections are open through the proxy now."""
        return len(self._links)

    # -- faults -----------------------------------------------------------------

    def forward(self) -> None:
        """Heal: forward again (silenced connections stay silent)."""
        self.delay_seconds = 0.0
        self._refusing = False
        self._flowing.set()

    def refuse(self) -> None:
        """Reset open connections and close new ones at once until :meth:`forward`."""
        self._refusing = True
        self.reset()

    def blackhole(self) -> None:
        """Forward nothing on any connection, open or new, until :meth:`forward`."""
        if self._flowing.is_set():
            self._flowing = trio.Event()

    def silence_existing(self) -> None:
        """The connections open now never carry another byte; new ones work."""
        for link in self._links:
            link.silenced = True

    def reset(self) -> None:
        """Close every open connection with a TCP reset."""
        for link in list(self._links):
            link.reset()

    def delay(self, seconds: float) -> None:
        """Hold each chunk ``seconds`` before passing it on (both directions)."""
        self.delay_seconds = seconds

    # -- running ----------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Accept and forward connections until cancelled."""
        listeners = await trio.open_tcp_listeners(0, host=self.host)
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            task_status.started()
            try:
                async with listeners[0]:
                    while True:
                        client = await listeners[0].accept()
                        nursery.start_soon(self._serve, client)
            finally:
                nursery.cancel_scope.cancel()

    async def _serve(self, client: trio.SocketStream) -> None:
        if self._refusing:
            _reset_on_close(client)
            await client.aclose()
            return
        async with client:
            await self._flowing.wait()  # a blackholed proxy answers no new connection either
            try:
                server = await trio.open_tcp_stream(self.target_host, self.target_port)
            except OSError:
                return  # the server is down: the client sees its connection closed
            link = _Link(client, server)
            self._links.add(link)
            try:
                async with server:
                    with link.scope:
                        async with trio.open_nursery() as nursery:
                            nursery.start_soon(self._pump, link, client, server, nursery)
                            nursery.start_soon(self._pump, link, server, client, nursery)
            finally:
                self._links.discard(link)

    async def _pump(
        self,
        link: _Link,
        source: trio.SocketStream,
        sink: trio.SocketStream,
        nursery: trio.Nursery,
    ) -> None:
        try:
            while True:
                await self._until_flowing(link)
                data = await source.receive_some(65536)
                if not data:
                    break
                await self._until_flowing(link)
                if self.delay_seconds:
                    await trio.sleep(self.delay_seconds)
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        # One side closed: close both, like the end of a TCP connection.
        nursery.cancel_scope.cancel()

    async def _until_flowing(self, link: _Link) -> None:
        if link.silenced:
            await trio.sleep_forever()
        await self._flowing.wait()
        if link.silenced:
            await trio.sleep_forever()


@asynccontextmanager
async def proxies(
    targets: Sequence[str], *, host: str = "127.0.0.1"
) -> AsyncIterator[list[FaultProxy]]:
    """One running :class:`FaultProxy` per ``host:port`` in ``targets``."""
    async with trio.open_nursery() as nursery:
        started = [FaultProxy(target, host=host) for target in targets]
        for proxy in started:
            await nursery.start(proxy.run)
        try:
            yield started
        finally:
            nursery.cancel_scope.cancel()


class ProxiedFactories:
    """Factories that each reach the backend through fault proxies of their own.

    ``url_of(endpoints)`` makes the URL for a list of ``host:port``; every
    factory opened by :meth:`open` gets one proxy per server in ``servers``, so
    one instance can be cut off while the others carry on.
    """

    def __init__(self, servers: Sequence[str], url_of: Callable[[list[str]], str]) -> None:
        self.servers = list(servers)
        self.url_of = url_of
        self.proxies: dict[str, list[FaultProxy]] = {}

    @asynccontextmanager
    async def open(self, instance_id: str) -> AsyncIterator[Factory]:
        async with proxies(self.servers) as own:
            self.proxies[instance_id] = own
            url = self.url_of([proxy.endpoint for proxy in own])
            async with election2.open_factory(url, instance_id=instance_id) as factory:
                yield factory

    def cut_off(self, instance_id: str) -> None:
        """The backend refuses ``instance_id``'s connections (fail fast)."""
        for proxy in self.proxies[instance_id]:
            proxy.refuse()

    def reconnect(self, instance_id: str) -> None:
        for proxy in self.proxies[instance_id]:
            proxy.forward()
