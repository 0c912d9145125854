"""Record what guarded workers did, then check that it was safe.

A :class:`HistoryRecorder` writes one record per mastership term
(:class:`TermRecord`) and per guarded operation (:class:`OperationRecord`);
the harness that pauses processes adds :class:`PauseRecord`\\ s.
:func:`check_history` then proves or disproves, per resource, that at most one
term did guarded work at a time, that no work ran past its term's local
deadline and that fencing tokens only increased::

    recorder = HistoryRecorder("worker-1", "history.jsonl")
    async with election.with_mastership() as scope:
        with recorder.term(election, scope) as term:
            with term.operation() as operation:
                if not await store.write(data, token=term.token):
                    operation.fenced()          # the store refused the token
    ...
    report = check_history(load_history("history.jsonl"))
    assert report.ok, report

Times are integer nanoseconds of one clock, by default ``time.monotonic_ns``:
CLOCK_MONOTONIC is system-wide on Linux, so the records of several processes
on one machine compare. Under trio's ``MockClock`` pass
``clock=lambda: round(trio.current_time() * 1e9)``.
"""

from __future__ import annotations

import bisect
import dataclasses
import heapq
import itertools
import json
import math
import os
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import ClassVar, Literal, Self

import trio

from .._election import Election

__all__ = [
    "DEFAULT_DEADLINE_TOLERANCE_NS",
    "CheckReport",
    "Excusal",
    "History",
    "HistoryRecorder",
    "OpenOperation",
    "OpenTerm",
    "OperationRecord",
    "Outcome",
    "PauseRecord",
    "Record",
    "TermRecord",
    "Violation",
    "ViolationKind",
    "check_history",
    "load_history",
    "record_from_json",
    "record_to_json",
]

Outcome = Literal["ok", "cancelled", "fenced", "error"]
ViolationKind = Literal["overlap", "fencing-order", "after-deadline", "token-reuse"]

#: How long past its deadline an operation may end (20 ms): trio wakes a task
#: whose deadline passed on the next scheduler pass, and a loaded machine makes
#: that late by milliseconds.
DEFAULT_DEADLINE_TOLERANCE_NS = 20_000_000


@dataclass(frozen=True)
class TermRecord:
    """One term of mastership as ``instance_id`` saw it: from entering the
    guarded block to leaving it (``end_ns`` None while open, or if the process
    died)."""

    kind: ClassVar[str] = "term"
    resource_id: str
    instance_id: str
    token: int
    start_ns: int
    end_ns: int | None


@dataclass(frozen=True)
class OperationRecord:
    """One guarded operation. ``deadline_ns`` is the term's local deadline as
    known when the operation ended; ``outcome`` is how it ended: ``"ok"``
    (completed), ``"cancelled"`` (trio cancelled it), ``"fenced"`` (a fenced
    store refused its token) or ``"error"`` (it raised)."""

    kind: ClassVar[str] = "operation"
    resource_id: str
    instance_id: str
    token: int
    start_ns: int
    end_ns: int
    deadline_ns: int
    outcome: Outcome


@dataclass(frozen=True)
class PauseRecord:
    """A time during which the process of ``instance_id`` was paused (SIGSTOP,
    a debugger, a VM freeze), as known to whoever paused it."""

    kind: ClassVar[str] = "pause"
    instance_id: str
    start_ns: int
    end_ns: int


Record = TermRecord | OperationRecord | PauseRecord

_RECORD_TYPES: dict[str, type[Record]] = {
    cls.kind: cls for cls in (TermRecord, OperationRecord, PauseRecord)
}


def record_to_json(record: Record) -> str:
    """One JSON object (no newline), with the record's type under ``"record"``."""
    return json.dumps({"record": record.kind, **dataclasses.asdict(record)})


def record_from_json(line: str) -> Record:
    """The record :func:`record_to_json` wrote; ``ValueError`` if it is not one."""
    data = json.loads(line)
    if not isinstance(data, dict) or data.get("record") not in _RECORD_TYPES:
        raise ValueError(f"not a history record: {line.strip()!r}")
    record_type = _RECORD_TYPES[data.pop("record")]
    try:
        return record_type(**data)
    except TypeError as exc:
        raise ValueError(f"malformed {record_type.kind} record {line.strip()!r}: {exc}") from exc


# -- recording ------------------------------------------------------------------------


class HistoryRecorder:
    """Records the terms and guarded operations of one instance.

    With a ``path``, each record is appended to that file as one JSON line in a
    single ``write`` on a descriptor opened with ``O_APPEND``, so several
    recorders (in one process or several) may share a file; records written
    survive a crash of the process. Without one, records are kept in
    :attr:`records`.

    ``clock`` returns the time in nanoseconds (default ``time.monotonic_ns``).
    Exceptions of a type in ``fenced_errors`` (say, your store's "stale fencing
    token" error) end an operation as ``"fenced"``.
    """

    def __init__(
        self,
        instance_id: str,
        path: str | os.PathLike[str] | None = None,
        *,
        clock: Callable[[], int] = time.monotonic_ns,
        fenced_errors: tuple[type[BaseException], ...] = (),
    ) -> None:
        self.instance_id = instance_id
        self.clock = clock
        self.fenced_errors = fenced_errors
        #: Every record written, in order, when there is no ``path``.
        self.records: list[Record] = []
        self._fd: int | None = None
        if path is not None:
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, record: Record) -> None:
        """Append one record (to the file, or to :attr:`records`)."""
        if self._fd is None:
            self.records.append(record)
        else:
            os.write(self._fd, f"{record_to_json(record)}\n".encode())

    def close(self) -> None:
        """Close the file, if any. Idempotent."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def history(self) -> History:
        """The :class:`History` of the records kept in memory."""
        return History.from_records(self.records)

    @contextmanager
    def term(self, election: Election, scope: trio.CancelScope) -> Iterator[OpenTerm]:
        """Record the block as one term of ``election``, guarded by ``scope``
        (what ``election.with_mastership()`` yielded); enter it right inside
        that ``async with``.

        Writes a :class:`TermRecord` on entry (``end_ns`` None) and another
        on exit. If the election holds no term on entry (its scope is then
        already cancelled) nothing is recorded and ``term.token`` is None.
        """
        if election.instance_id != self.instance_id:
            raise ValueError(
                f"election of instance {election.instance_id!r} given to the recorder "
                f"of {self.instance_id!r}"
            )
        token = election.fencing_token
        term = OpenTerm(self, election.resource_id, token, scope)
        if token is None:
            yield term
            return
        if not math.isfinite(scope.deadline):
            raise ValueError("the scope has no deadline: pass what with_mastership() yielded")
        start_ns = self.clock()
        self.write(TermRecord(election.resource_id, self.instance_id, token, start_ns, None))
        try:
            yield term
        finally:
            self.write(
                TermRecord(election.resource_id, self.instance_id, token, start_ns, self.clock())
            )

    @contextmanager
    def paused(self, instance_id: str) -> Iterator[None]:
        """Record the block as a pause of ``instance_id``'s process: stop it
        inside the block, and let it go before leaving."""
        start_ns = self.clock()
        try:
            yield
        finally:
            self.write(PauseRecord(instance_id, start_ns, self.clock()))

    def outcome_of(self, error: BaseException) -> Outcome:
        """How an operation that raised ``error`` ended: ``"fenced"`` if it is
        (or a group holds) one of :attr:`fenced_errors`, ``"cancelled"`` if it
        is (or a group holds only) ``trio.Cancelled``, else ``"error"``."""
        group = error if isinstance(error, BaseExceptionGroup) else BaseExceptionGroup("", [error])
        if self.fenced_errors and group.split(self.fenced_errors)[0] is not None:
            return "fenced"
        if group.split(trio.Cancelled)[1] is None:
            return "cancelled"
        return "error"


class OpenTerm:
    """A term being recorded, as :meth:`HistoryRecorder.term` yields it."""

    def __init__(
        self,
        recorder: HistoryRecorder,
        resource_id: str,
        token: int | None,
        scope: trio.CancelScope,
    ) -> None:
        self.resource_id = resource_id
        #: The term's fencing token; None if there was no term to record.
        self.token = token
        self._recorder = recorder
        self._scope = scope

    @contextmanager
    def operation(self) -> Iterator[OpenOperation]:
        """Record the block as one guarded operation of this term.

        Its outcome is ``"ok"`` if the block completes, else
        :meth:`HistoryRecorder.outcome_of` the exception (which propagates);
        :meth:`OpenOperation.fenced` overrides both. The
        :class:`OperationRecord` is written when the block ends.
        """
        operation = OpenOperation()
        start_ns = self._recorder.clock()
        outcome: Outcome = "ok"
        try:
            yield operation
        except BaseException as exc:
            outcome = self._recorder.outcome_of(exc)
            raise
        finally:
            if self.token is not None:
                end_ns = self._recorder.clock()
                deadline_ns = end_ns + round((self._scope.deadline - trio.current_time()) * 1e9)
                self._recorder.write(
                    OperationRecord(
                        self.resource_id,
                        self._recorder.instance_id,
                        self.token,
                        start_ns,
                        end_ns,
                        deadline_ns,
                        "fenced" if operation.was_fenced else outcome,
                    )
                )


class OpenOperation:
    """An operation being recorded, as :meth:`OpenTerm.operation` yields it."""

    def __init__(self) -> None:
        self.was_fenced = False

    def fenced(self) -> None:
        """Mark the operation as refused by a fenced store (outcome ``"fenced"``)."""
        self.was_fenced = True


# -- histories ------------------------------------------------------------------------


@dataclass(frozen=True)
class History:
    """The records of one run, ready for :func:`check_history`."""

    terms: Sequence[TermRecord] = ()
    operations: Sequence[OperationRecord] = ()
    pauses: Sequence[PauseRecord] = ()

    @classmethod
    def from_records(cls, records: Iterable[Record]) -> History:
        """Sort records by type and merge term records into terms.

        An instance may open several scopes per term (one per batch, or several
        at once), each written on entry and on exit; all records of one
        (resource, instance, token) are one term, from the first entry to the
        last exit, and still open (``end_ns`` None) if more were written on
        entry than on exit.
        """
        terms: dict[tuple[str, str, int], list[TermRecord]] = defaultdict(list)
        operations: list[OperationRecord] = []
        pauses: list[PauseRecord] = []
        for record in records:
            if isinstance(record, TermRecord):
                terms[record.resource_id, record.instance_id, record.token].append(record)
            elif isinstance(record, OperationRecord):
                operations.append(record)
            else:
                pauses.append(record)
        return cls([_merge_term(parts) for parts in terms.values()], operations, pauses)


def _merge_term(parts: list[TermRecord]) -> TermRecord:
    ends = [part.end_ns for part in parts if part.end_ns is not None]
    still_open = len(parts) - len(ends) > len(ends)
    return dataclasses.replace(
        parts[0],
        start_ns=min(part.start_ns for part in parts),
        end_ns=None if still_open or not ends else max(ends),
    )


def load_history(*paths: str | os.PathLike[str]) -> History:
    """The :class:`History` of every record in the JSON-lines files ``paths``."""
    records: list[Record] = []
    for path in paths:
        with open(path, encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                if line.strip():
                    try:
                        records.append(record_from_json(line))
                    except ValueError as exc:
                        raise ValueError(f"{os.fspath(path)}:{number}: {exc}") from exc
    return History.from_records(records)


# -- checking -------------------------------------------------------------------------


@dataclass(frozen=True)
class Violation:
    """A safety property the history breaks, with the records that show it."""

    kind: ViolationKind
    message: str
    records: tuple[Record, ...]

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


@dataclass(frozen=True)
class Excusal:
    """An operation not counted as a ``kind`` violation because its process was
    paused during it (``pause``) and its work did not complete (outcome not
    ``"ok"``): the pause gap that fencing closes."""

    kind: Literal["overlap", "fencing-order", "after-deadline"]
    operation: OperationRecord
    pause: PauseRecord


@dataclass
class CheckReport:
    """What :func:`check_history` found. ``ok`` when there is no violation."""

    terms: int = 0
    operations: int = 0
    fenced_operations: int = 0
    violations: list[Violation] = field(default_factory=list)
    excusals: list[Excusal] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def summary(self) -> str:
        """A few lines for a test failure or a log: counts, then each violation."""
        verdict = "ok" if self.ok else f"{len(self.violations)} violation(s)"
        lines = [
            f"history check: {verdict}; {self.terms} term(s), {self.operations} operation(s) "
            f"checked, {self.fenced_operations} refused by fencing"
        ]
        if self.excusals:
            excused = {id(excusal.operation) for excusal in self.excusals}
            reasons = Counter(excusal.kind for excusal in self.excusals)
            lines.append(
                f"{len(excused)} operation(s) excused as paused and not completed: "
                + ", ".join(f"{count} from {kind}" for kind, count in sorted(reasons.items()))
            )
        lines.extend(f"  {violation}" for violation in self.violations)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def check_history(
    history: History, *, deadline_tolerance_ns: int = DEFAULT_DEADLINE_TOLERANCE_NS
) -> CheckReport:
    """Check every resource of ``history`` for these violations:

    * ``overlap``: two operations of different terms (token or instance
      differ) whose intervals intersect. Intervals that only touch (one ends
      at the nanosecond the other starts) do not: the clock cannot order them.
    * ``fencing-order``: an operation whose token is below that of an
      operation (not refused by fencing) that ended before it started, unless
      its outcome is ``"fenced"``; or a term whose token is below that of
      another instance's term that ended before it started.
    * ``after-deadline``: an operation that ended more than
      ``deadline_tolerance_ns`` after its ``deadline_ns``, whatever its outcome.
    * ``token-reuse``: one token held by terms of two instances, or a term whose
      token is below that of an earlier term of the same instance.

    An operation whose instance was paused during it and whose outcome is not
    ``"ok"`` is excused from ``overlap``, ``fencing-order`` and
    ``after-deadline`` (listed in ``report.excusals``); an ``"ok"`` operation
    never is. Each resource costs
    O(n log n).
    """
    report = CheckReport(terms=len(history.terms), operations=len(history.operations))
    report.fenced_operations = sum(op.outcome == "fenced" for op in history.operations)
    terms_by_resource: dict[str, list[TermRecord]] = defaultdict(list)
    for term in history.terms:
        terms_by_resource[term.resource_id].append(term)
    for terms in terms_by_resource.values():
        _check_terms(terms, report)
    pauses = _Pauses(history.pauses)
    operations_by_resource: dict[str, list[OperationRecord]] = defaultdict(list)
    for op in history.operations:
        operations_by_resource[op.resource_id].append(op)
    for operations in operations_by_resource.values():
        _check_operations(operations, pauses, deadline_tolerance_ns, report)
    return report


def _check_terms(terms: list[TermRecord], report: CheckReport) -> None:
    """The token checks on the terms of one resource."""
    by_token: dict[int, list[TermRecord]] = defaultdict(list)
    by_instance: dict[str, list[TermRecord]] = defaultdict(list)
    for term in terms:
        by_token[term.token].append(term)
        by_instance[term.instance_id].append(term)
    for token, holders in by_token.items():
        if len(holders) > 1:
            names = ", ".join(sorted(term.instance_id for term in holders))
            report.violations.append(
                Violation(
                    "token-reuse",
                    f"resource {holders[0].resource_id!r}: token {token} held by {names}",
                    tuple(holders),
                )
            )
    for own_terms in by_instance.values():
        own_terms.sort(key=lambda term: term.start_ns)
        for previous, term in itertools.pairwise(own_terms):
            if term.token < previous.token:
                report.violations.append(
                    Violation(
                        "token-reuse",
                        f"resource {term.resource_id!r}: {term.instance_id} took token "
                        f"{term.token} at {_seconds(term.start_ns)} after token "
                        f"{previous.token} at {_seconds(previous.start_ns)}",
                        (previous, term),
                    )
                )
    # Across instances: the highest token of the terms ended so far. A lower one
    # of the same instance is the per-instance check's to report.
    ended = sorted((t.end_ns, i, t) for i, t in enumerate(terms) if t.end_ns is not None)
    highest: TermRecord | None = None
    position = 0
    for term in sorted(terms, key=lambda t: t.start_ns):
        while position < len(ended) and ended[position][0] <= term.start_ns:
            _, _, ended_term = ended[position]
            if highest is None or ended_term.token > highest.token:
                highest = ended_term
            position += 1
        if (
            highest is not None
            and term.token < highest.token
            and term.instance_id != highest.instance_id
        ):
            report.violations.append(
                Violation(
                    "fencing-order",
                    f"resource {term.resource_id!r}: {term.instance_id}'s term with token "
                    f"{term.token} started at {_seconds(term.start_ns)}, after "
                    f"{highest.instance_id}'s term with token {highest.token} ended at "
                    f"{_seconds(highest.end_ns)}",
                    (highest, term),
                )
            )


class _Pauses:
    """The pauses of each instance, to find one during an interval in O(log n)."""

    def __init__(self, pauses: Iterable[PauseRecord]) -> None:
        by_instance: dict[str, list[PauseRecord]] = defaultdict(list)
        for pause in pauses:
            by_instance[pause.instance_id].append(pause)
        self._starts: dict[str, list[int]] = {}
        #: For the pauses sorted by start, the one ending last among the first i+1.
        self._latest_ending: dict[str, list[PauseRecord]] = {}
        for instance_id, own in by_instance.items():
            own.sort(key=lambda pause: pause.start_ns)
            latest: list[PauseRecord] = []
            for pause in own:
                latest.append(
                    pause if not latest or pause.end_ns > latest[-1].end_ns else latest[-1]
                )
            self._starts[instance_id] = [pause.start_ns for pause in own]
            self._latest_ending[instance_id] = latest

    def during(self, op: OperationRecord) -> PauseRecord | None:
        """A pause of the operation's instance that intersects the operation."""
        starts = self._starts.get(op.instance_id)
        if starts is None:
            return None
        started_before_end = bisect.bisect_left(starts, op.end_ns)
        if started_before_end == 0:
            return None
        pause = self._latest_ending[op.instance_id][started_before_end - 1]
        return pause if pause.end_ns > op.start_ns else None


@dataclass
class _TermOperations:
    """The running operations of one term that may still be part of an overlap."""

    unexcusable: dict[int, OperationRecord] = field(default_factory=dict)
    excusable: dict[int, tuple[OperationRecord, PauseRecord]] = field(default_factory=dict)


def _check_operations(
    operations: list[OperationRecord], pauses: _Pauses, tolerance_ns: int, report: CheckReport
) -> None:
    """Sweep the operations of one resource in order of start.

    ``running`` holds the operations started so far that have not ended, by
    term; an excusable one leaves it once excused (it is counted once).
    """
    operations = sorted(operations, key=lambda op: (op.start_ns, op.end_ns))
    by_end: list[tuple[int, int, OperationRecord]] = []
    running: dict[tuple[str, int], _TermOperations] = {}
    highest: OperationRecord | None = None  # highest token of the ended, unfenced operations
    for index, op in enumerate(operations):
        while by_end and by_end[0][0] <= op.start_ns:
            _, ended_index, ended = heapq.heappop(by_end)
            _forget(running, (ended.instance_id, ended.token), ended_index)
            if ended.outcome != "fenced" and (highest is None or ended.token > highest.token):
                highest = ended
        heapq.heappush(by_end, (op.end_ns, index, op))
        excusing_pause = pauses.during(op) if op.outcome != "ok" else None

        if highest is not None and op.token < highest.token and op.outcome != "fenced":
            if excusing_pause is not None:
                # Resumed past its deadline, it started and was cancelled at
                # its first checkpoint: a stale token, but no completed work.
                report.excusals.append(Excusal("fencing-order", op, excusing_pause))
            else:
                report.violations.append(
                    Violation(
                        "fencing-order",
                        f"resource {op.resource_id!r}: {_describe(op)} used token {op.token} "
                        f"after {_describe(highest)} ended",
                        (highest, op),
                    )
                )

        if op.end_ns > op.deadline_ns + tolerance_ns:
            if excusing_pause is not None:
                report.excusals.append(Excusal("after-deadline", op, excusing_pause))
            else:
                late_ms = (op.end_ns - op.deadline_ns) / 1e6
                report.violations.append(
                    Violation(
                        "after-deadline",
                        f"resource {op.resource_id!r}: {_describe(op)} ended {late_ms:.3f} ms "
                        f"after its term's deadline {_seconds(op.deadline_ns)}",
                        (op,),
                    )
                )

        term = (op.instance_id, op.token)
        others = [(key, ops) for key, ops in running.items() if key != term]
        if excusing_pause is not None and others:
            report.excusals.append(Excusal("overlap", op, excusing_pause))
            continue
        partner: OperationRecord | None = None
        for key, ops in others:
            for other, other_pause in ops.excusable.values():
                report.excusals.append(Excusal("overlap", other, other_pause))
            ops.excusable.clear()
            if partner is None and ops.unexcusable:
                partner = next(iter(ops.unexcusable.values()))
            if not ops.unexcusable:
                del running[key]
        if partner is not None:
            report.violations.append(
                Violation(
                    "overlap",
                    f"resource {op.resource_id!r}: {_describe(op)} overlaps {_describe(partner)}",
                    (partner, op),
                )
            )
        own = running.setdefault(term, _TermOperations())
        if excusing_pause is None:
            own.unexcusable[index] = op
        else:
            own.excusable[index] = (op, excusing_pause)


def _forget(
    running: dict[tuple[str, int], _TermOperations], term: tuple[str, int], index: int
) -> None:
    own = running.get(term)
    if own is not None:
        own.unexcusable.pop(index, None)
        own.excusable.pop(index, None)
        if not (own.unexcusable or own.excusable):
            del running[term]


def _seconds(ns: int | None) -> str:
    if ns is None:
        return "(open)"
    return f"{ns / 1e9:.6f}s"


def _describe(op: OperationRecord) -> str:
    return (
        f"{op.instance_id}'s operation with token {op.token} "
        f"[{_seconds(op.start_ns)}, {_seconds(op.end_ns)}] ({op.outcome})"
    )
