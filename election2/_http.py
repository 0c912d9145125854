"""A minimal HTTP/1.1 server on trio, for ``/metrics`` and ``/healthz``.

Enough HTTP for scrapers and probes, and nothing more: ``GET`` (and ``HEAD``)
of a fixed set of paths, one request per connection (every response says
``Connection: close``). A request must arrive whole, headers and all, within
``REQUEST_TIMEOUT`` seconds and ``MAX_REQUEST_BYTES`` bytes, so a slow or
hostile client cannot hold a connection open. The server is a task: it runs in
the caller's nursery until cancelled, and so does every connection.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping

import trio

from .errors import ConfigurationError

__all__ = ["MAX_REQUEST_BYTES", "REQUEST_TIMEOUT", "Response", "Route", "serve_http"]

log = logging.getLogger("election2.http")

#: (status, content type, body)
Response = tuple[int, str, bytes]
#: Builds the response to a GET of its path; called at request time.
Route = Callable[[], Response]

REQUEST_TIMEOUT = 10.0
MAX_REQUEST_BYTES = 8192

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


async def serve_http(
    port: int,
    routes: Mapping[str, Route],
    *,
    host: str = "0.0.0.0",
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``routes`` (path -> response builder) on ``host:port`` until
    cancelled; ``task_status.started`` gets the port bound (``port`` 0: any
    free one). A port that cannot be bound raises :class:`ConfigurationError`."""
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot serve HTTP on {host}:{port}: {exc.strerror or exc}"
        ) from None
    bound: int = listeners[0].socket.getsockname()[1]
    task_status.started(bound)

    async def handle(stream: trio.SocketStream) -> None:
        # A client that goes away mid-request has nobody left to answer.
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await _handle(stream, routes)

    await trio.serve_listeners(handle, listeners)


async def _handle(stream: trio.SocketStream, routes: Mapping[str, Route]) -> None:
    head = b""
    with trio.move_on_after(REQUEST_TIMEOUT) as reading:
        while b"\r\n\r\n" not in head and b"\n\n" not in head:
            if len(head) > MAX_REQUEST_BYTES:
                await _respond(stream, "GET", (431, "text/plain", b"request too large\n"))
                return
            data = await stream.receive_some(4096)
            if not data:
                return  # closed before a whole request: no one to answer
            head += data
    if reading.cancelled_caught:
        with trio.move_on_after(1):  # best effort: the client may not be reading
            await _respond(stream, "GET", (408, "text/plain", b"request timeout\n"))
        return
    with trio.move_on_after(REQUEST_TIMEOUT):  # a client that does not read
        await _respond(stream, *_route(head, routes))


def _route(head: bytes, routes: Mapping[str, Route]) -> tuple[str, Response]:
    """(method, response) for the request ``head``."""
    parts = head.split(b"\n", 1)[0].decode("latin-1").strip().split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return "GET", (400, "text/plain", b"bad request\n")
    method, target = parts[0], parts[1]
    if method not in ("GET", "HEAD"):
        return "GET", (405, "text/plain", b"only GET and HEAD\n")
    route = routes.get(target.split("?", 1)[0])
    if route is None:
        return method, (404, "text/plain", b"not found\n")
    try:
        return method, route()
    except Exception:
        log.exception("HTTP handler for %s failed", target)
        return method, (500, "text/plain", b"internal error\n")


async def _respond(stream: trio.SocketStream, method: str, response: Response) -> None:
    status, content_type, body = response
    headers = [
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if status == 405:
        headers.append("Allow: GET, HEAD")
    head = ("\r\n".join(headers) + "\r\n\r\n").encode("latin-1")
    await stream.send_all(head if method == "HEAD" else head + body)
    # Half-close first: the client reads everything up to our FIN, then trio
    # closes the socket once the handler returns.
    await stream.send_eof()
