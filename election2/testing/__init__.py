"""Tools for testing code that uses election2, and for testing mechanisms.

* :class:`FaultyElection` - inject errors into, or block, any election;
* :class:`HistoryRecorder` and :func:`check_history` - record what guarded
  workers did and check that at most one term worked at a time, within its
  deadline, with increasing fencing tokens (:mod:`election2.testing.history`);
* :class:`ElectionConformance` - the suite every mechanism must pass
  (import it from :mod:`election2.testing.conformance`, it needs pytest);
* :mod:`election2.testing.pytest_plugin` - opt-in fixtures for the memory
  mechanism: ``pytest_plugins = ["election2.testing.pytest_plugin"]``.
"""

from ..mechanisms.memory import MemoryBackend, Term
from .faults import FaultyElection
from .history import (
    DEFAULT_DEADLINE_TOLERANCE_NS,
    CheckReport,
    Excusal,
    History,
    HistoryRecorder,
    OpenOperation,
    OpenTerm,
    OperationRecord,
    Outcome,
    PauseRecord,
    Record,
    TermRecord,
    Violation,
    ViolationKind,
    check_history,
    load_history,
    record_from_json,
    record_to_json,
)

__all__ = [
    "DEFAULT_DEADLINE_TOLERANCE_NS",
    "CheckReport",
    "Excusal",
    "FaultyElection",
    "History",
    "HistoryRecorder",
    "MemoryBackend",
    "OpenOperation",
    "OpenTerm",
    "OperationRecord",
    "Outcome",
    "PauseRecord",
    "Record",
    "Term",
    "TermRecord",
    "Violation",
    "ViolationKind",
    "check_history",
    "load_history",
    "record_from_json",
    "record_to_json",
]
