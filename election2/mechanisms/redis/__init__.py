"""The Redis mechanism: Redlock over ``redis://h1:p1,h2:p2,h3:p3/PREFIX?ttl=S``.

``rediss://`` uses TLS. Options (keyword arguments of ``open_factory`` or URL
query keys): ``ttl`` (seconds, default 10), ``node_timeout`` (per node and
call; default ttl/100 clamped to [100 ms, 500 ms]), ``close_timeout`` (5 s),
``key_template`` (default ``"{prefix}/{resource}"``; one under which a
resource's key could be ``<prefix>//members``, the members set, is refused),
``username`` / ``password`` (AUTH/ACL; also ``redis://user:password@...``),
``ca`` / ``cert`` / ``key`` (PEM files for TLS). An even number of nodes works but
tolerates no more failures than one node fewer: a warning is logged. Needs the
``redis`` extra (no client library: election2 speaks RESP itself, see
``_resp.py``; ``hiredis`` is used for parsing when installed).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from ..._checks import check_positive_seconds, default_instance_id
from ..._election import single_exception
from ...errors import ConfigurationError
from .. import settings_of
from ._mechanism import RedisElection, RedisFactory
from ._redlock import RedisNode

__all__ = ["RedisElection", "RedisFactory", "open_factory"]

log = logging.getLogger("election2.redis")


@asynccontextmanager
async def open_factory(
    url: str, *, instance_id: str | None = None, **options: Any
) -> AsyncIterator[RedisFactory]:
    """Open a Redlock factory over the nodes of ``url``; see the module docstring.

    Raises :class:`~election2.errors.ConfigurationError` for a bad URL or
    option, :class:`~election2.errors.MechanismUnavailableError` naming the
    unreachable nodes when fewer than a quorum answer.
    """
    settings = settings_of(
        url,
        options,
        mechanism="redis",
        default_port=6379,
        extra_options=frozenset({"node_timeout", "key_template"}),
        tls_scheme="rediss",
    )
    parsed = settings.parsed
    default_node_timeout = min(max(parsed.ttl / 100, 0.1), 0.5)
    node_timeout = check_positive_seconds(
        settings.values.get("node_timeout", default_node_timeout), name="node_timeout", maximum=60
    )
    if node_timeout >= parsed.ttl / 3:
        raise ConfigurationError(
            f"node_timeout={node_timeout:g} must be well below ttl={parsed.ttl:g} (< ttl/3)"
        )
    key_template = str(settings.values.get("key_template", "{prefix}/{resource}"))
    try:
        key_template.format(prefix="p", resource="r")
    except (KeyError, IndexError, ValueError):
        raise ConfigurationError(f"bad key_template {key_template!r}") from None
    if "{resource}" not in key_template:
        raise ConfigurationError(f"key_template must contain {{resource}}: {key_template!r}")
    if len(parsed.endpoints) % 2 == 0:
        log.warning(
            "redlock over an even number of nodes (%d) tolerates no more failures than %d",
            len(parsed.endpoints),
            len(parsed.endpoints) - 1,
        )
    nodes = [
        RedisNode(
            host,
            port,
            timeout=node_timeout,
            username=settings.username,
            password=settings.password,
            tls=settings.tls,
        )
        for host, port in parsed.endpoints
    ]
    factory = RedisFactory(
        nodes,
        prefix=parsed.prefix,
        key_template=key_template,
        instance_id=default_instance_id() if instance_id is None else instance_id,
        ttl=parsed.ttl,
        close_timeout=settings.close_timeout,
    )
    with single_exception():  # the clients' nurseries wrap errors in groups
        async with AsyncExitStack() as clients:
            for node in nodes:
                await clients.enter_async_context(node.client)
            async with factory.running():
                yield factory
