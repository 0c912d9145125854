"""A small trio-native RESP2 client: what the Redlock layer needs, nothing more.

Chosen on measurements (``bench/bench_resp.py``; numbers in
``docs/performance.md``): a call through coredis under trio costs several
times the client CPU of a plain socket round trip, and the many-resources
runs are bound by that CPU. This client pipelines.

* :class:`RedisClient` (one per node) is an async context manager owning a
  nursery; entered, it connects lazily on the first call. Commands share
  ONE connection, pipelined: a caller appends its waiter to a FIFO and, on
  a plain TCP connection with nothing else being written, writes its
  encoded command itself with one non-blocking ``write`` (no task switch);
  whatever does not fit in the socket buffer, and every command while the
  connection's writer task is busy (or on TLS), goes to the outgoing buffer,
  which the writer sends in one write. The write is synchronous, so nothing
  a caller does (cancellation included) can cut a command in half on the
  wire. The reader task waits for the socket to be readable, then reads,
  parses replies and hands them out in FIFO order.
* A caller cancelled while its reply is pending abandons its waiter: the
  reply is still read and dropped, so the stream stays in step. The
  connection is then *retired* (suspect: a timeout is the usual cause, and a
  silent connection would stall everything queued behind): later calls open
  a new one, and the retired one closes once no live waiter is left on it.
* A connection error (reset, EOF, TLS failure, protocol error) fails every
  pending waiter with :class:`ConnectionLostError`; the next call reconnects.
* Connecting (TCP, TLS handshake with ``server_hostname`` = host, ``AUTH``
  with a username for ACLs or the password alone) is bounded by
  ``connect_timeout``.
* :meth:`RedisClient.subscribe` opens a separate connection for pub/sub,
  read by the consumer's own task (no background task): it yields
  ``subscribe`` confirmations and ``message`` notices, and sends a ``PING``
  after ``keepalive`` seconds without traffic, so a connection that went
  silent ends with :class:`ConnectionLostError` instead of waiting forever.
* Scripts run by ``EVALSHA`` (sha1 cached per script text), falling back to
  ``EVAL`` on ``NOSCRIPT`` (which loads the script).
* Error replies raise :class:`ReplyError`; every error of this module is a
  :class:`RedisError`. Replies are decoded as UTF-8 (invalid bytes replaced).
  Parsing uses ``hiredis`` when it is importable, else a pure-Python parser.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import ssl
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from types import TracebackType
from typing import Any, NamedTuple, Protocol, Self

import outcome
import trio

try:  # optional: imported by name, so type checking does not depend on it
    hiredis: Any = importlib.import_module("hiredis")
except ImportError:  # pragma: no cover - depends on the environment
    hiredis = None

#: Replies are parsed by hiredis (installed) unless a client is told otherwise.
HAVE_HIREDIS = hiredis is not None

__all__ = [
    "HAVE_HIREDIS",
    "ConnectionLostError",
    "Message",
    "ProtocolError",
    "PythonParser",
    "Raw",
    "RedisClient",
    "RedisError",
    "ReplyError",
    "bulk_strings",
    "encode",
]

_CHUNK = 65536


class RedisError(Exception):
    """Any failure of a Redis call."""


class ReplyError(RedisError):
    """An error reply (``-ERR ...``); :attr:`code` is its first word."""

    @property
    def code(self) -> str:
        return str(self.args[0]).split(" ", 1)[0] if self.args else ""


class ConnectionLostError(RedisError):
    """The connection could not be opened, or failed with calls pending."""


class ProtocolError(ConnectionLostError):
    """The server sent something that is not RESP2."""


class Message(NamedTuple):
    """A pub/sub push: ``kind`` is ``subscribe``, ``message``, ..."""

    kind: str
    channel: str
    data: Any


# -- encoding and parsing ---------------------------------------------------------------


class Raw:
    """A run of ``count`` arguments already encoded as RESP2 bulk strings
    (:func:`bulk_strings`): big argument lists encoded once and sent to
    several nodes, or again and again, without encoding them each time."""

    __slots__ = ("count", "data")

    def __init__(self, data: bytes, count: int) -> None:
        self.data = data
        self.count = count


Arg = str | bytes | int | float | Raw


def count_args(args: Sequence[Arg]) -> int:
    """How many arguments ``args`` stands for (a :class:`Raw` run counts its own)."""
    return sum(arg.count if isinstance(arg, Raw) else 1 for arg in args)


def bulk_strings(strings: Sequence[str]) -> Raw:
    """``strings`` as one :class:`Raw` run (one pass; ASCII in one encode)."""
    text = "".join([f"${len(s)}\r\n{s}\r\n" for s in strings])
    if text.isascii():
        return Raw(text.encode(), len(strings))
    data = [s.encode() for s in strings]  # lengths in bytes, not characters
    return Raw(b"".join([b"$%d\r\n%s\r\n" % (len(d), d) for d in data]), len(strings))


def encode(args: Sequence[Arg]) -> bytes:
    """One command as a RESP2 array of bulk strings."""
    parts = [b"*%d\r\n" % count_args(args)]
    for arg in args:
        if isinstance(arg, Raw):
            parts.append(arg.data)
            continue
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, int):
            data = b"%d" % arg
        else:
            data = repr(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class _NotReady:
    """The parser needs more data (``None`` is a reply: a nil bulk string)."""


NOT_READY = _NotReady()

#: A spurious wake-up of a pub/sub read: nothing to parse, not a closed stream.
_NOTHING_YET = b"?"


class Parser(Protocol):
    def feed(self, data: bytes | bytearray, /) -> None: ...

    def gets(self) -> Any: ...


class _Incomplete(Exception):
    pass


class PythonParser:
    """RESP2 replies from a byte stream; same interface as ``hiredis.Reader``:
    :meth:`gets` answers :data:`NOT_READY` until a whole reply arrived; error
    replies come as :class:`ReplyError` instances (not raised)."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._pos = 0

    def feed(self, data: bytes | bytearray, /) -> None:
        self._buffer += data

    def gets(self) -> Any:
        start = self._pos
        if start >= len(self._buffer):
            return NOT_READY
        try:
            reply = self._parse()
        except _Incomplete:
            self._pos = start
            return NOT_READY
        if self._pos == len(self._buffer):
            self._buffer.clear()
            self._pos = 0
        elif self._pos > _CHUNK:
            del self._buffer[: self._pos]
            self._pos = 0
        return reply

    def _parse(self) -> Any:
        buffer = self._buffer
        end = buffer.find(b"\r\n", self._pos)
        if end < 0:
            raise _Incomplete
        kind = buffer[self._pos]
        line = bytes(buffer[self._pos + 1 : end])
        self._pos = end + 2
        if kind == 36:  # $ bulk string
            length = int(line)
            if length < 0:
                return None
            stop = self._pos + length
            if len(buffer) < stop + 2:
                raise _Incomplete
            data = bytes(buffer[self._pos : stop])
            self._pos = stop + 2
            return data.decode("utf-8", "replace")
        if kind == 58:  # : integer
            return int(line)
        if kind == 42:  # * array
            count = int(line)
            return None if count < 0 else [self._parse() for _ in range(count)]
        if kind == 43:  # + simple string
            return line.decode("utf-8", "replace")
        if kind == 45:  # - error
            return ReplyError(line.decode("utf-8", "replace"))
        raise ProtocolError(f"not a RESP2 reply: {bytes(buffer[self._pos - 2 - len(line) :])!r}")


def new_parser(use_hiredis: bool | None = None) -> Parser:
    """``hiredis.Reader`` if available (unless ``use_hiredis`` is False)."""
    if use_hiredis is not False and hiredis is not None:
        reader: Parser = hiredis.Reader(
            replyError=ReplyError,
            protocolError=ProtocolError,
            notEnoughData=NOT_READY,
            encoding="utf-8",
            errors="replace",
        )
        return reader
    if use_hiredis:
        raise RuntimeError("hiredis is not installed")
    return PythonParser()


def _lost(what: str, exc: BaseException) -> ConnectionLostError:
    """A connection failure named after what failed and its first cause."""
    if isinstance(exc, ConnectionLostError):
        return exc
    cause: BaseException = exc
    while cause.__cause__ is not None and not str(cause):
        cause = cause.__cause__
    detail = str(cause) or "connection closed"
    return ConnectionLostError(f"{what}: {type(cause).__name__}: {detail}")


def _script_sha(script: str, cache: dict[str, str] = {}) -> str:  # noqa: B006 - the cache
    sha = cache.get(script)
    if sha is None:
        sha = cache[script] = hashlib.sha1(script.encode()).hexdigest()
    return sha


# -- one pipelined connection -----------------------------------------------------------


class _Waiter:
    __slots__ = ("task",)

    def __init__(self, task: trio.lowlevel.Task) -> None:
        #: The caller parked for the reply; None once it gave up.
        self.task: trio.lowlevel.Task | None = task


class _Connection:
    """One stream with a writer and a reader task (see the module docstring)."""

    def __init__(self, stream: trio.abc.Stream, parser: Parser, name: str) -> None:
        self.stream = stream
        self.parser = parser
        self.name = name
        #: The socket's descriptor on a plain TCP connection (written and
        #: read directly, see the module docstring); None on TLS.
        self.fd: int | None = (
            stream.socket.fileno() if isinstance(stream, trio.SocketStream) else None
        )
        #: The writer task is sending: nobody else may write meanwhile.
        self.writing = False
        self.pending: deque[_Waiter] = deque()
        #: Waiters in ``pending`` whose caller still waits.
        self.live = 0
        self.outgoing: list[bytes] = []
        self.writer_idle = trio.lowlevel.ParkingLot()
        #: No new calls: replaced after a cancelled call, or failed.
        self.retired = False
        self.error: ConnectionLostError | None = None
        self.scope = trio.CancelScope()

    async def call(self, data: bytes) -> Any:
        if self.retired:
            raise ConnectionLostError(str(self.error or f"{self.name}: connection closed"))
        waiter = _Waiter(trio.lowlevel.current_task())
        self.pending.append(waiter)
        self.live += 1
        if self.fd is not None and not self.outgoing and not self.writing:
            # Nothing else is being written: write it now, synchronously.
            try:
                sent = os.write(self.fd, data)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                # The connection is done for; our waiter is failed with the
                # others (by run(), once it unwinds).
                self.fail(exc)
                sent = len(data)
            if sent < len(data):
                self.outgoing.append(data[sent:])
                self.writer_idle.unpark()
        else:
            self.outgoing.append(data)
            self.writer_idle.unpark()

        def abort(_: Any) -> trio.lowlevel.Abort:
            # Cancelled while pending: the reply will be read and dropped.
            waiter.task = None
            self.live -= 1
            self.retire()
            return trio.lowlevel.Abort.SUCCEEDED

        return await trio.lowlevel.wait_task_rescheduled(abort)

    def retire(self) -> None:
        self.retired = True
        if self.live == 0:
            self.scope.cancel()

    def fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = _lost(self.name, exc)
        self.retired = True
        self.scope.cancel()

    async def run(self) -> None:
        try:
            with self.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._write)
                    nursery.start_soon(self._read)
        finally:
            self.retired = True
            reason = str(self.error or f"{self.name}: connection closed")
            while self.pending:
                task = self.pending.popleft().task
                if task is not None:
                    trio.lowlevel.reschedule(task, outcome.Error(ConnectionLostError(reason)))
            self.live = 0
            await trio.aclose_forcefully(self.stream)

    async def _write(self) -> None:
        try:
            while True:
                if not self.outgoing:
                    await self.writer_idle.park()
                    continue
                data = b"".join(self.outgoing) if len(self.outgoing) > 1 else self.outgoing[0]
                self.outgoing.clear()
                self.writing = True
                await self.stream.send_all(data)
                self.writing = False
        except Exception as exc:
            self.fail(exc)

    async def _read(self) -> None:
        pending, parser, fd = self.pending, self.parser, self.fd
        try:
            while True:
                if fd is None:
                    data = await self.stream.receive_some(_CHUNK)
                else:
                    # Wait first: right after a reply nothing more is there
                    # yet, and a read would only say so (one syscall saved).
                    await trio.lowlevel.wait_readable(fd)
                    try:
                        data = os.read(fd, _CHUNK)
                    except BlockingIOError:
                        continue
                if not data:
                    raise ConnectionLostError(f"{self.name}: connection closed by the server")
                parser.feed(data)
                while (reply := parser.gets()) is not NOT_READY:
                    if not pending:
                        raise ProtocolError(f"{self.name}: a reply nobody asked for: {reply!r}")
                    task = pending.popleft().task
                    if task is not None:
                        self.live -= 1
                        trio.lowlevel.reschedule(task, outcome.Value(reply))
                if self.retired and self.live == 0:
                    self.scope.cancel()
        except Exception as exc:
            self.fail(exc)


# -- the client -------------------------------------------------------------------------


class RedisClient:
    """A pipelined client of one Redis server; enter it before calling."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        username: str | None = None,
        password: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        connect_timeout: float = 1.0,
        keepalive: float = 15.0,
        use_hiredis: bool | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.name = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._username, self._password = username, password
        self._ssl_context = ssl_context
        self.connect_timeout = connect_timeout
        self.keepalive = keepalive
        self._use_hiredis = use_hiredis
        new_parser(use_hiredis)  # fail now if hiredis is asked for and missing
        self._connection: _Connection | None = None
        self._connect_lock = trio.Lock()
        self._stack: AsyncExitStack | None = None
        self._nursery: trio.Nursery | None = None

    async def __aenter__(self) -> Self:
        async with AsyncExitStack() as stack:
            self._nursery = await stack.enter_async_context(trio.open_nursery())
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._stack is not None and self._nursery is not None
        self._nursery.cancel_scope.cancel()  # the connections' tasks
        stack, self._stack, self._nursery = self._stack, None, None
        self._connection = None
        return await stack.__aexit__(exc_type, exc, tb)

    # -- commands

    async def execute(self, *args: Arg) -> Any:
        """Send one command and return its reply; raise :class:`ReplyError`
        for an error reply, :class:`ConnectionLostError` for the connection."""
        connection = self._connection
        if connection is None or connection.retired:
            connection = await self._connect()
        reply = await connection.call(encode(args))
        if isinstance(reply, ReplyError):
            raise reply
        return reply

    async def run_script(self, script: str, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        """``EVALSHA``, or ``EVAL`` where the node does not know the script
        (keys and arguments may include :class:`Raw` runs)."""
        numkeys = count_args(keys)
        try:
            return await self.execute("EVALSHA", _script_sha(script), numkeys, *keys, *args)
        except ReplyError as exc:
            if exc.code != "NOSCRIPT":
                raise
        return await self.execute("EVAL", script, numkeys, *keys, *args)

    async def get(self, key: str) -> str | None:
        reply: str | None = await self.execute("GET", key)
        return reply

    async def ping(self) -> str:
        return str(await self.execute("PING"))

    # -- connections

    async def _connect(self) -> _Connection:
        async with self._connect_lock:
            connection = self._connection
            if connection is not None and not connection.retired:
                return connection
            nursery = self._nursery
            if nursery is None:
                raise ConnectionLostError(f"{self.name}: the client is closed")
            stream, parser = await self._open()
            connection = _Connection(stream, parser, self.name)
            nursery.start_soon(connection.run)
            self._connection = connection
            return connection

    async def _open(self) -> tuple[trio.abc.Stream, Parser]:
        """A new connection, handshake and AUTH done, within the connect timeout."""
        stream: trio.abc.Stream | None = None
        what = f"{self.name}: connect"
        try:
            with trio.fail_after(self.connect_timeout):
                stream = await trio.open_tcp_stream(self.host, self.port)
                if self._ssl_context is not None:
                    what = f"{self.name}: TLS handshake"
                    stream = trio.SSLStream(stream, self._ssl_context, server_hostname=self.host)
                    await stream.do_handshake()
                parser = new_parser(self._use_hiredis)
                if self._password is not None:
                    what = f"{self.name}: AUTH"
                    auth = (
                        ("AUTH", self._username, self._password)
                        if self._username
                        else (
                            "AUTH",
                            self._password,
                        )
                    )
                    await stream.send_all(encode(auth))
                    reply = await _receive_reply(stream, parser)
                    if isinstance(reply, ReplyError):
                        raise reply
            return stream, parser
        except BaseException as exc:
            if stream is not None:
                await trio.aclose_forcefully(stream)
            if isinstance(exc, trio.TooSlowError):
                raise ConnectionLostError(
                    f"{what}: no answer within {self.connect_timeout:g} s"
                ) from None
            if isinstance(exc, ReplyError):
                raise
            if isinstance(exc, OSError | trio.BrokenResourceError | trio.ClosedResourceError):
                raise _lost(what, exc) from exc
            raise

    # -- pub/sub

    @asynccontextmanager
    async def subscribe(self, channel: str) -> AsyncIterator[Subscription]:
        """A new connection subscribed to ``channel``; iterate for messages."""
        stream, parser = await self._open()
        try:
            try:
                await stream.send_all(encode(("SUBSCRIBE", channel)))
            except (OSError, trio.BrokenResourceError) as exc:
                raise _lost(f"{self.name}: SUBSCRIBE", exc) from exc
            yield Subscription(stream, parser, self.name, self.keepalive, self.connect_timeout)
        finally:
            await trio.aclose_forcefully(stream)


class Subscription:
    """The pushes of a subscribed connection, read by the iterating task."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        parser: Parser,
        name: str,
        keepalive: float,
        answer_timeout: float,
    ) -> None:
        self._stream, self._parser, self._name = stream, parser, name
        self._fd = stream.socket.fileno() if isinstance(stream, trio.SocketStream) else None
        self._keepalive = keepalive
        #: How long a keepalive PING may go unanswered.
        self._answer_timeout = max(1.0, 2 * answer_timeout)

    def __aiter__(self) -> Subscription:
        return self

    async def _receive(self) -> bytes:
        """What arrived; on plain TCP, wait until the socket is readable
        first (a notice is rarely followed by another at once)."""
        fd = self._fd
        if fd is None:
            return bytes(await self._stream.receive_some(_CHUNK))
        await trio.lowlevel.wait_readable(fd)
        try:
            return os.read(fd, _CHUNK)
        except BlockingIOError:
            return _NOTHING_YET

    async def __anext__(self) -> Message:
        pinged = False
        while True:
            reply = self._parser.gets()
            if reply is NOT_READY:
                data = None
                with trio.move_on_after(self._answer_timeout if pinged else self._keepalive):
                    try:
                        data = await self._receive()
                    except (OSError, trio.BrokenResourceError) as exc:
                        raise _lost(f"{self._name}: pub/sub", exc) from exc
                if data is _NOTHING_YET:
                    continue
                if data is None:
                    if pinged:
                        raise ConnectionLostError(
                            f"{self._name}: pub/sub: no answer to PING within "
                            f"{self._answer_timeout:g} s"
                        )
                    try:
                        await self._stream.send_all(encode(("PING",)))
                    except (OSError, trio.BrokenResourceError) as exc:
                        raise _lost(f"{self._name}: pub/sub", exc) from exc
                    pinged = True
                    continue
                if not data:
                    raise ConnectionLostError(f"{self._name}: pub/sub: connection closed")
                self._parser.feed(data)
                pinged = False
                continue
            if isinstance(reply, ReplyError):
                raise reply
            if not isinstance(reply, list) or len(reply) < 2:
                raise ProtocolError(f"{self._name}: pub/sub: unexpected {reply!r}")
            if reply[0] == "pong":
                continue
            return Message(str(reply[0]), str(reply[1]), reply[2] if len(reply) > 2 else None)


async def _receive_reply(stream: trio.abc.Stream, parser: Parser) -> Any:
    while (reply := parser.gets()) is NOT_READY:
        data = await stream.receive_some(_CHUNK)
        if not data:
            raise ConnectionLostError("connection closed by the server")
        parser.feed(data)
    return reply
