"""The scheme registry behind :func:`election2.open_factory`.

A mechanism is a callable ``open_factory(url, *, instance_id=None, **options)``
returning an async context manager that yields a :class:`~election2.Factory`.
It is found by the URL's scheme in the entry-point group
``election2.mechanisms``; the built-in ones are also known without
installed metadata. :func:`parse_url` is the URL grammar they share.
"""

from __future__ import annotations

import importlib
import re
import ssl
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, cast
from urllib.parse import parse_qsl, unquote, urlsplit

from .._checks import DEFAULT_TTL, check_positive_seconds, check_prefix, check_ttl
from .._election import Factory
from ..errors import ConfigurationError

__all__ = [
    "MechanismSettings",
    "Opener",
    "ParsedURL",
    "host_port",
    "open_factory",
    "parse_url",
    "register",
    "settings_of",
]

Opener = Callable[..., AbstractAsyncContextManager[Factory]]

ENTRY_POINT_GROUP = "election2.mechanisms"
_BUILTIN = {
    "memory": "election2.mechanisms.memory:open_factory",
    "etcd": "election2.mechanisms.etcd:open_factory",
    "etcds": "election2.mechanisms.etcd:open_factory",
    "redis": "election2.mechanisms.redis:open_factory",
    "rediss": "election2.mechanisms.redis:open_factory",
}
_registered: dict[str, Opener] = {}


def register(scheme: str, opener: Opener) -> None:
    """Register ``opener`` for ``scheme`` in this process (tests, plugins)."""
    _registered[scheme.lower()] = opener


def _load(target: str) -> Opener:
    module, _, name = target.partition(":")
    return cast(Opener, getattr(importlib.import_module(module), name))


def _find(scheme: str) -> Opener:
    if scheme in _registered:
        return _registered[scheme]
    for entry in entry_points(group=ENTRY_POINT_GROUP, name=scheme):
        return cast(Opener, entry.load())
    if scheme in _BUILTIN:
        return _load(_BUILTIN[scheme])
    known = sorted(
        {*_BUILTIN, *_registered, *(e.name for e in entry_points(group=ENTRY_POINT_GROUP))}
    )
    raise ConfigurationError(f"unknown election URL scheme {scheme!r}; known: {', '.join(known)}")


def open_factory(
    url: str, *, instance_id: str | None = None, **options: Any
) -> AbstractAsyncContextManager[Factory]:
    """Open a factory for ``url`` (``memory://NAME``, ``etcd://...``, ``redis://...``).

    Use as ``async with open_factory(url) as factory:``; leaving the block
    closes every election of the factory (each resigns) and releases its
    session. Raises :class:`~election2.errors.ConfigurationError` at once for an
    unknown scheme or malformed URL.
    """
    if not isinstance(url, str):
        raise ConfigurationError(f"election URL must be a str, not {url!r}")
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if not re.fullmatch(r"[a-z][a-z0-9+.-]*", scheme):
        raise ConfigurationError(f"election URL needs a scheme such as memory://: {url!r}")
    return _find(scheme)(url, instance_id=instance_id, **options)


@dataclass(frozen=True)
class ParsedURL:
    """``scheme://[user:password@]host:port[,host:port...]/PREFIX?key=value``."""

    url: str
    scheme: str
    endpoints: list[tuple[str, int]]
    prefix: str
    ttl: float
    username: str | None = None
    password: str | None = None
    query: dict[str, str] = field(default_factory=dict)


def _endpoint(part: str, default_port: int, url: str) -> tuple[str, int]:
    """``host[:port]`` or ``[ipv6][:port]`` as (host without brackets, port)."""
    if part.startswith("["):
        host, bracket, rest = part[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ConfigurationError(f"bad endpoint {part!r} in URL {url!r}")
        port_text = rest[1:] if rest else str(default_port)
    elif part.count(":") > 1:
        raise ConfigurationError(
            f"an IPv6 host needs brackets, as in [::1]:{default_port}: {part!r} in URL {url!r}"
        )
    else:
        host, sep, port_text = part.partition(":")
        port_text = port_text if sep else str(default_port)
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigurationError(f"bad port {port_text!r} in URL {url!r}") from None
    if not host or not 0 < port < 65536:
        raise ConfigurationError(f"bad endpoint {part!r} in URL {url!r}")
    return host, port


def host_port(host: str, port: int) -> str:
    """``host:port``, with an IPv6 host in brackets (for URLs and messages)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_url(
    url: str,
    *,
    default_port: int,
    default_prefix: str,
    options: Mapping[str, Any],
    allowed: frozenset[str] = frozenset(),
    min_ttl: float = 0.0,
) -> ParsedURL:
    """Parse a multi-endpoint URL; ``ttl`` may come from the query or ``options``.

    Unknown query keys (other than ``ttl`` and ``allowed``) are rejected, so a
    typo never silently falls back to a default.
    """
    try:
        split = urlsplit(url)
    except ValueError as exc:  # "Invalid IPv6 URL": an unclosed bracket
        raise ConfigurationError(f"bad endpoint in URL {url!r}: {exc}") from None
    netloc = split.netloc
    username = password = None
    if "@" in netloc:
        credentials, _, netloc = netloc.rpartition("@")
        username, _, password = credentials.partition(":")
    if not netloc:
        raise ConfigurationError(f"URL names no host: {url!r}")
    endpoints = [_endpoint(part, default_port, url) for part in netloc.split(",")]
    if len(set(endpoints)) != len(endpoints):
        raise ConfigurationError(f"an endpoint is listed twice in {url!r}")
    pairs = parse_qsl(split.query, keep_blank_values=True)
    repeated = sorted({key for key, _ in pairs if sum(1 for k, _ in pairs if k == key) > 1})
    if repeated:
        raise ConfigurationError(f"URL option(s) {repeated} given twice in {url!r}")
    query = dict(pairs)
    unknown = set(query) - {"ttl"} - allowed
    if unknown:
        raise ConfigurationError(f"unknown URL option(s) {sorted(unknown)} in {url!r}")
    if "ttl" in query and "ttl" in options and float(query["ttl"]) != options["ttl"]:
        raise ConfigurationError(f"ttl given twice, in the URL and as an option: {url!r}")
    ttl = check_ttl(options.get("ttl", query.get("ttl", DEFAULT_TTL)), minimum=min_ttl)
    prefix = check_prefix(unquote(split.path) or default_prefix)
    return ParsedURL(
        url=url,
        scheme=split.scheme.lower(),
        endpoints=endpoints,
        prefix=prefix,
        ttl=ttl,
        username=username or None,
        password=password or None,
        query={k: v for k, v in query.items() if k != "ttl"},
    )


#: Options every network mechanism takes (keyword arguments or URL query keys).
COMMON_OPTIONS = frozenset({"close_timeout", "username", "password", "ca", "cert", "key"})


@dataclass(frozen=True)
class MechanismSettings:
    """A network mechanism's URL and options, checked and merged."""

    parsed: ParsedURL
    #: URL query keys overridden by keyword options.
    values: dict[str, Any]
    close_timeout: float
    username: str | None
    password: str | None
    #: A TLS context when the URL's scheme asks for TLS, else None.
    tls: ssl.SSLContext | None


def settings_of(
    url: str,
    options: Mapping[str, Any],
    *,
    mechanism: str,
    default_port: int,
    extra_options: frozenset[str],
    tls_scheme: str,
) -> MechanismSettings:
    """Check ``url`` and ``options`` of a network mechanism; see :func:`parse_url`."""
    allowed = COMMON_OPTIONS | extra_options
    unknown = set(options) - allowed - {"ttl"}
    if unknown:
        raise ConfigurationError(f"unknown option(s) for {mechanism}: {sorted(unknown)}")
    parsed = parse_url(
        url, default_port=default_port, default_prefix="election2", options=options, allowed=allowed
    )
    values: dict[str, Any] = {**parsed.query, **options}
    close_timeout = check_positive_seconds(
        values.get("close_timeout", 5.0), name="close_timeout", maximum=300
    )
    tls = _tls_context(mechanism, values) if parsed.scheme == tls_scheme else None
    return MechanismSettings(
        parsed=parsed,
        values=values,
        close_timeout=close_timeout,
        username=values.get("username", parsed.username),
        password=values.get("password", parsed.password),
        tls=tls,
    )


def _tls_context(mechanism: str, values: Mapping[str, Any]) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(cafile=values.get("ca"))
        if values.get("cert"):
            context.load_cert_chain(values["cert"], values.get("key"))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(f"{mechanism} TLS files (ca/cert/key): {exc}") from None
    return context
