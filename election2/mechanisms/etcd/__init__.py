"""The etcd mechanism: ``etcd://host:port[,host:port...]/PREFIX?ttl=S``.

``etcds://`` uses TLS. Options (keyword arguments of ``open_factory`` or URL
query keys): ``ttl`` (seconds, default 10), ``timeout`` (per request and
connect, default 2 s), ``close_timeout`` (5 s), ``ca`` / ``cert`` / ``key``
(PEM file paths for TLS), ``username`` / ``password`` (etcd authentication;
also ``etcd://user:password@host``). Needs the ``etcd`` extra (httpx).
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from ..._checks import check_positive_seconds, default_instance_id
from ...errors import ConfigurationError
from .. import parse_url
from ._client import EtcdClient, EtcdError
from ._mechanism import EtcdElection, EtcdFactory

__all__ = ["EtcdClient", "EtcdElection", "EtcdError", "EtcdFactory", "open_factory"]

_OPTIONS = frozenset({"timeout", "close_timeout", "ca", "cert", "key", "username", "password"})


def _tls_context(options: dict[str, Any]) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(cafile=options.get("ca"))
        if options.get("cert"):
            context.load_cert_chain(options["cert"], options.get("key"))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(f"etcd TLS files {options!r}: {exc}") from None
    return context


@asynccontextmanager
async def open_factory(
    url: str, *, instance_id: str | None = None, **options: Any
) -> AsyncIterator[EtcdFactory]:
    """Open a factory on the etcd cluster of ``url``; see the module docstring.

    Raises :class:`~election2.errors.ConfigurationError` for a bad URL or
    option and :class:`~election2.errors.MechanismUnavailableError` (naming the
    URL) when no endpoint answers within ``timeout``.
    """
    unknown = set(options) - _OPTIONS - {"ttl"}
    if unknown:
        raise ConfigurationError(f"unknown option(s) for etcd: {sorted(unknown)}")
    parsed = parse_url(
        url, default_port=2379, default_prefix="election2", options=options, allowed=_OPTIONS
    )
    settings: dict[str, Any] = {**parsed.query, **options}
    timeout = check_positive_seconds(settings.get("timeout", 2.0), name="timeout", maximum=300)
    close_timeout = check_positive_seconds(
        settings.get("close_timeout", 5.0), name="close_timeout", maximum=300
    )
    tls = parsed.scheme == "etcds"
    scheme = "https" if tls else "http"
    client = EtcdClient(
        [f"{scheme}://{host}:{port}" for host, port in parsed.endpoints],
        name=url,
        timeout=timeout,
        tls=_tls_context(settings) if tls else None,
        username=settings.get("username", parsed.username),
        password=settings.get("password", parsed.password),
    )
    factory = EtcdFactory(
        client,
        prefix=parsed.prefix,
        instance_id=default_instance_id() if instance_id is None else instance_id,
        ttl=parsed.ttl,
        close_timeout=close_timeout,
    )
    try:
        async with factory.running():
            yield factory
    finally:
        await client.aclose()
