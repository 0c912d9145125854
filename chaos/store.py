"""The fenced store the candidates write through: one TCP server, tokens per resource.

A write names a resource and a fencing token. The store accepts it when the
token is at least the highest it accepted for that resource (the same term
writes again and again), and refuses it otherwise: a master that lost its term
without noticing (paused, cut off) cannot overwrite its successor's work.

Protocol, one line each way: ``<resource> <token> <instance>\\n`` answered by
``ok\\n`` or ``fenced <highest>\\n``. The store remembers who wrote last to
each resource, so the nemesis can aim at masters.
"""

from __future__ import annotations

from collections import Counter

import trio

__all__ = ["FencedStore", "StoreClient"]


class FencedStore:
    """The server; runs in the orchestrator's nursery (never paused or killed)."""

    def __init__(self) -> None:
        self.port = 0
        self.highest: dict[str, int] = {}
        self.accepted: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self.last_writer: dict[str, str] = {}

    def write(self, resource: str, token: int, instance: str = "") -> bool:
        if token < self.highest.get(resource, 0):
            self.refused[resource] += 1
            return False
        self.highest[resource] = token
        self.last_writer[resource] = instance
        self.accepted[resource] += 1
        return True

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._serve, listeners)

    async def _serve(self, stream: trio.SocketStream) -> None:
        buffer = b""
        async with stream:
            try:
                while True:
                    data = await stream.receive_some(4096)
                    if not data:
                        return
                    buffer += data
                    *lines, buffer = buffer.split(b"\n")
                    answers = []
                    for line in lines:
                        resource, token, instance = line.decode().split()
                        if self.write(resource, int(token), instance):
                            answers.append(b"ok\n")
                        else:
                            answers.append(f"fenced {self.highest[resource]}\n".encode())
                    await stream.send_all(b"".join(answers))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return


class StoreClient:
    """One connection to the store; a request cut short drops the connection
    (its answer could otherwise be read as the next request's)."""

    def __init__(self, port: int, instance: str) -> None:
        self.port = port
        self.instance = instance
        self._stream: trio.SocketStream | None = None
        self._buffer = b""

    async def write(self, resource: str, token: int) -> bool:
        """True if the store accepted ``token`` for ``resource``."""
        try:
            if self._stream is None:
                self._stream = await trio.open_tcp_stream("127.0.0.1", self.port)
                self._buffer = b""
            await self._stream.send_all(f"{resource} {token} {self.instance}\n".encode())
            while b"\n" not in self._buffer:
                data = await self._stream.receive_some(4096)
                if not data:
                    raise trio.BrokenResourceError("the store closed the connection")
                self._buffer += data
        except BaseException:
            await self.aclose()
            raise
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line == b"ok"

    async def aclose(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            with trio.CancelScope(shield=True):
                await stream.aclose()
