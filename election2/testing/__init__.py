"""Tools for testing code that uses election2, and for testing mechanisms.

* :class:`FaultyElection` - inject errors into, or block, any election;
* :class:`ElectionConformance` - the suite every mechanism must pass
  (import it from :mod:`election2.testing.conformance`, it needs pytest);
* :mod:`election2.testing.pytest_plugin` - opt-in fixtures for the memory
  mechanism: ``pytest_plugins = ["election2.testing.pytest_plugin"]``.
"""

from ..mechanisms.memory import MemoryBackend, Term
from .faults import FaultyElection

__all__ = ["FaultyElection", "MemoryBackend", "Term"]
