"""The exceptions election2 raises.

Every error is an :class:`ElectionError`. The two that reject bad input also
derive from :class:`ValueError`, so callers that already handle ``ValueError``
keep working.
"""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "ElectionClosedError",
    "ElectionError",
    "InvalidResourceIdError",
    "MechanismUnavailableError",
]


class ElectionError(Exception):
    """Base class of every error raised by election2."""


class ElectionClosedError(ElectionError):
    """The election (or its factory) was closed; it cannot be used again."""


class MechanismUnavailableError(ElectionError):
    """The backend cannot be reached, or no quorum of it answered in time."""


class InvalidResourceIdError(ElectionError, ValueError):
    """A resource id is not a non-empty string of at most 256 printable
    characters without ``/``."""


class ConfigurationError(ElectionError, ValueError):
    """A URL, option or setting is malformed or out of range."""
