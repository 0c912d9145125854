"""The etcd mechanism: ``etcd://host:port[,host:port...]/PREFIX?ttl=S``.

``etcds://`` uses TLS. Options (keyword arguments of ``open_factory`` or URL
query keys): ``ttl`` (seconds, default 10), ``timeout`` (per request and
connect, default 2 s), ``close_timeout`` (5 s), ``ca`` / ``cert`` / ``key``
(PEM file paths for TLS), ``username`` / ``password`` (etcd authentication;
also ``etcd://user:password@host``). Needs the ``etcd`` extra (httpx).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from ..._checks import check_positive_seconds, default_instance_id
from .. import host_port, settings_of
from ._client import EtcdClient, EtcdError
from ._mechanism import EtcdElection, EtcdFactory

__all__ = ["EtcdClient", "EtcdElection", "EtcdError", "EtcdFactory", "open_factory"]


@asynccontextmanager
async def open_factory(
    url: str, *, instance_id: str | None = None, **options: Any
) -> AsyncIterator[EtcdFactory]:
    """Open a factory on the etcd cluster of ``url``; see the module docstring.

    Raises :class:`~election2.errors.ConfigurationError` for a bad URL or
    option and :class:`~election2.errors.MechanismUnavailableError` (naming the
    URL) when no endpoint answers within ``timeout``.
    """
    settings = settings_of(
        url,
        options,
        mechanism="etcd",
        default_port=2379,
        extra_options=frozenset({"timeout"}),
        tls_scheme="etcds",
    )
    parsed = settings.parsed
    timeout = check_positive_seconds(
        settings.values.get("timeout", 2.0), name="timeout", maximum=300
    )
    scheme = "https" if settings.tls is not None else "http"
    client = EtcdClient(
        [f"{scheme}://{host_port(host, port)}" for host, port in parsed.endpoints],
        name=url,
        timeout=timeout,
        tls=settings.tls,
        username=settings.username,
        password=settings.password,
    )
    factory = EtcdFactory(
        client,
        prefix=parsed.prefix,
        instance_id=default_instance_id() if instance_id is None else instance_id,
        ttl=parsed.ttl,
        close_timeout=settings.close_timeout,
    )
    try:
        async with factory.running():
            yield factory
    finally:
        await client.aclose()
