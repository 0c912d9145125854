"""The Redis mechanism: Redlock over ``redis://h1:p1,h2:p2,h3:p3/PREFIX?ttl=S``.

``rediss://`` uses TLS. Options (keyword arguments of ``open_factory`` or URL
query keys): ``ttl`` (seconds, default 10), ``node_timeout`` (per node and
call; default ttl/100 clamped to [100 ms, 500 ms]), ``close_timeout`` (5 s),
``key_template`` (default ``"{prefix}/{resource}"``), ``username`` /
``password`` (AUTH/ACL; also ``redis://user:password@...``), ``ca`` /
``cert`` / ``key`` (PEM files for TLS). An even number of nodes works but
tolerates no more failures than one node fewer: a warning is logged. Needs the
``redis`` extra (coredis).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from ..._checks import check_positive_seconds, default_instance_id
from ..._election import single_exception
from ...errors import ConfigurationError
from .. import parse_url
from ._mechanism import RedisElection, RedisFactory
from ._redlock import RedisNode

__all__ = ["RedisElection", "RedisFactory", "open_factory"]

log = logging.getLogger("election2.redis")
_OPTIONS = frozenset(
    {"node_timeout", "close_timeout", "key_template", "username", "password", "ca", "cert", "key"}
)


def _tls_context(settings: dict[str, Any]) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(cafile=settings.get("ca"))
        if settings.get("cert"):
            context.load_cert_chain(settings["cert"], settings.get("key"))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(f"redis TLS files: {exc}") from None
    return context


@asynccontextmanager
async def open_factory(
    url: str, *, instance_id: str | None = None, **options: Any
) -> AsyncIterator[RedisFactory]:
    """Open a Redlock factory over the nodes of ``url``; see the module docstring.

    Raises :class:`~election2.errors.ConfigurationError` for a bad URL or
    option, :class:`~election2.errors.MechanismUnavailableError` naming the
    unreachable nodes when fewer than a quorum answer.
    """
    unknown = set(options) - _OPTIONS - {"ttl"}
    if unknown:
        raise ConfigurationError(f"unknown option(s) for redis: {sorted(unknown)}")
    parsed = parse_url(
        url, default_port=6379, default_prefix="election2", options=options, allowed=_OPTIONS
    )
    settings: dict[str, Any] = {**parsed.query, **options}
    default_node_timeout = min(max(parsed.ttl / 100, 0.1), 0.5)
    node_timeout = check_positive_seconds(
        settings.get("node_timeout", default_node_timeout), name="node_timeout", maximum=60
    )
    if node_timeout >= parsed.ttl / 3:
        raise ConfigurationError(
            f"node_timeout={node_timeout:g} must be well below ttl={parsed.ttl:g} (< ttl/3)"
        )
    close_timeout = check_positive_seconds(
        settings.get("close_timeout", 5.0), name="close_timeout", maximum=300
    )
    key_template = str(settings.get("key_template", "{prefix}/{resource}"))
    try:
        key_template.format(prefix="p", resource="r")
    except (KeyError, IndexError, ValueError):
        raise ConfigurationError(f"bad key_template {key_template!r}") from None
    if "{resource}" not in key_template:
        raise ConfigurationError(f"key_template must contain {{resource}}: {key_template!r}")
    if len({*parsed.endpoints}) != len(parsed.endpoints):
        raise ConfigurationError(f"a node is listed twice in {url!r}")
    if len(parsed.endpoints) % 2 == 0:
        log.warning(
            "redlock over an even number of nodes (%d) tolerates no more failures than %d",
            len(parsed.endpoints),
            len(parsed.endpoints) - 1,
        )
    tls = _tls_context(settings) if parsed.scheme == "rediss" else None
    nodes = [
        RedisNode(
            host,
            port,
            timeout=node_timeout,
            username=settings.get("username", parsed.username),
            password=settings.get("password", parsed.password),
            tls=tls,
        )
        for host, port in parsed.endpoints
    ]
    factory = RedisFactory(
        nodes,
        prefix=parsed.prefix,
        key_template=key_template,
        instance_id=default_instance_id() if instance_id is None else instance_id,
        ttl=parsed.ttl,
        close_timeout=close_timeout,
    )
    with single_exception():  # coredis' pools wrap errors in groups
        async with AsyncExitStack() as clients:
            for node in nodes:
                await clients.enter_async_context(node.client)
            async with factory.running():
                yield factory
