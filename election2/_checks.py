"""Input checks shared by the core and every mechanism.

Each check returns the normalised value or raises a typed error from
:mod:`election2.errors` whose message names the offending value.
"""

from __future__ import annotations

import math
import os
import re
import secrets
import socket

from .errors import ConfigurationError, InvalidResourceIdError

__all__ = [
    "DEFAULT_TTL",
    "MAX_RESOURCE_ID_LENGTH",
    "MAX_TTL",
    "check_grace",
    "check_instance_id",
    "check_positive_seconds",
    "check_prefix",
    "check_resource_id",
    "check_ttl",
    "default_instance_id",
    "drift_margin",
]

DEFAULT_TTL = 10.0
#: Longer leases than a day are almost certainly a unit mistake (ms for s).
MAX_TTL = 86_400.0
MAX_RESOURCE_ID_LENGTH = 256
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def check_resource_id(resource_id: object) -> str:
    """A resource id is a non-empty ``str`` of at most 256 characters with no
    control characters and no ``/`` (it becomes one segment of a backend key)."""
    if not isinstance(resource_id, str):
        raise InvalidResourceIdError(
            f"resource id must be a str, not {type(resource_id).__name__}: {resource_id!r}"
        )
    if not resource_id:
        raise InvalidResourceIdError("resource id must not be empty: ''")
    if len(resource_id) > MAX_RESOURCE_ID_LENGTH:
        raise InvalidResourceIdError(
            f"resource id is {len(resource_id)} characters long, the limit is "
            f"{MAX_RESOURCE_ID_LENGTH}: {resource_id[:40]!r}..."
        )
    if "/" in resource_id or _CONTROL.search(resource_id):
        raise InvalidResourceIdError(
            f"resource id must not contain '/' or control characters: {resource_id!r}"
        )
    return resource_id


def check_instance_id(instance_id: object) -> str:
    """Instance ids follow the resource-id rules (they end up in keys and values)."""
    try:
        return check_resource_id(instance_id)
    except InvalidResourceIdError as exc:
        raise ConfigurationError(f"invalid instance id: {exc}") from None


def check_positive_seconds(value: object, *, name: str, maximum: float = MAX_TTL) -> float:
    """A finite number of seconds in ``(0, maximum]``; strings from URLs are parsed."""
    if isinstance(value, bool):
        raise ConfigurationError(f"{name} must be a number of seconds, not {value!r}")
    if isinstance(value, str):
        try:
            seconds = float(value)
        except ValueError:
            raise ConfigurationError(f"{name} must be a number of seconds: {value!r}") from None
    elif isinstance(value, int | float):
        seconds = float(value)
    else:
        raise ConfigurationError(f"{name} must be a number of seconds, not {value!r}")
    if not math.isfinite(seconds) or seconds <= 0 or seconds > maximum:
        raise ConfigurationError(f"{name} must be in (0, {maximum:g}] seconds: {value!r}")
    return seconds


def check_ttl(value: object, *, minimum: float = 0.0) -> float:
    """A lease TTL: positive, finite, at most a day, and at least ``minimum``."""
    ttl = check_positive_seconds(value, name="ttl")
    if ttl < minimum:
        raise ConfigurationError(
            f"ttl must be at least {minimum:g} s for this mechanism: {value!r}"
        )
    return ttl


def check_grace(value: object, *, ttl: float) -> float:
    """A ``with_mastership`` grace: a number of seconds in ``[0, ttl)``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"grace must be a number of seconds, not {value!r}")
    grace = float(value)
    if not math.isfinite(grace) or not 0 <= grace < ttl:
        raise ConfigurationError(f"grace must be in [0, ttl={ttl:g}) seconds: {value!r}")
    return grace


def check_prefix(prefix: str) -> str:
    """A key prefix: ``/``-separated non-empty segments without control characters."""
    stripped = prefix.strip("/")
    if not stripped or any(not part for part in stripped.split("/")) or _CONTROL.search(stripped):
        raise ConfigurationError(
            f"key prefix must be non-empty '/'-separated segments without control "
            f"characters: {prefix!r}"
        )
    return stripped


def drift_margin(ttl: float) -> float:
    """How much earlier than the backend a local lease expires: 1 % of the TTL
    plus 2 ms, the clock-drift allowance of the Redlock paper, used everywhere."""
    return ttl * 0.01 + 0.002


def default_instance_id() -> str:
    """``host-pid-random``: unique per process and readable in ``leader()``."""
    host = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname()) or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"
