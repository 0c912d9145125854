"""What a campaign measured, from the candidates' histories and the fault log.

* **Operations checked, violations**: :func:`election2.testing.check_history`
  on every record the candidates wrote, with the nemesis's pauses.
* **Availability** of a resource: the share of the measured window (from the
  nemesis's start to the end of the settle phase) covered by some term's
  *working interval*: from the term's start to the end of its last operation
  that completed (``"ok"``). A term that never completed an operation covers
  nothing; a paused or killed master stops covering at its last completed
  operation, not when the process resumes or its lease expires.
* **Failover time**: every term followed by another one on its resource is a
  master lost, blamed on the fault that most plausibly ended it: among the
  faults that started during the term (by 100 ms after its last completed
  operation) and ended no more than a TTL before that operation, a fault of
  the term's own candidate if there is one, else a server fault; the latest
  started of those. The failover time is from that fault's start to the
  next term's start. A term that ended with no fault to blame counts under
  ``none``, measured from its last completed operation. Faults that left
  every master in place (a minority server down, a short delay) give no
  sample.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from election2.testing import CheckReport, History, TermRecord

__all__ = ["CampaignResult", "Fault", "WorkingTerm", "percentile"]

NS = 1_000_000_000


@dataclass
class Fault:
    """One injected fault: ``kind`` on ``target``, from ``start_ns`` to ``end_ns``
    (``time.monotonic_ns``, like the histories)."""

    kind: str
    target: str
    start_ns: int
    end_ns: int | None = None
    detail: str = ""


@dataclass(frozen=True)
class WorkingTerm:
    term: TermRecord
    work_end_ns: int  # end of its last "ok" operation


def working_terms(history: History) -> dict[str, list[WorkingTerm]]:
    """The terms of each resource with a completed operation, by start."""
    last_ok: dict[tuple[str, str, int], int] = {}
    for op in history.operations:
        if op.outcome == "ok":
            key = (op.resource_id, op.instance_id, op.token)
            last_ok[key] = max(last_ok.get(key, 0), op.end_ns)
    by_resource: dict[str, list[WorkingTerm]] = defaultdict(list)
    for term in history.terms:
        end = last_ok.get((term.resource_id, term.instance_id, term.token))
        if end is not None:
            by_resource[term.resource_id].append(WorkingTerm(term, end))
    for terms in by_resource.values():
        terms.sort(key=lambda t: t.term.start_ns)
    return dict(by_resource)


def availability(terms: Sequence[WorkingTerm], begin_ns: int, end_ns: int) -> float:
    """Share of [begin_ns, end_ns] covered by the working intervals of ``terms``."""
    covered = 0
    cursor = begin_ns
    for wt in sorted(terms, key=lambda t: t.term.start_ns):
        start, stop = max(wt.term.start_ns, cursor), min(wt.work_end_ns, end_ns)
        if stop > start:
            covered += stop - start
            cursor = stop
    return covered / (end_ns - begin_ns) if end_ns > begin_ns else 0.0


def failovers(
    faults: Sequence[Fault],
    terms_by_resource: dict[str, list[WorkingTerm]],
    ttl_ns: int,
    candidates: frozenset[str],
    window_end_ns: int,
) -> dict[str, list[float]]:
    """Failover seconds per fault kind (see the module docstring); a term whose
    successor started after ``window_end_ns`` (a hand-over when the candidates
    are stopped) is left out.

    Every term that was followed by another is blamed on one fault: the
    latest-started one that could have ended it, a fault of the term's own
    candidate before a server fault; a term that ended with no such fault
    counts under ``"none"``.
    """
    samples: dict[str, list[float]] = defaultdict(list)
    for terms in terms_by_resource.values():
        for holder, successor in itertools.pairwise(terms):
            if successor.term.start_ns >= window_end_ns:
                continue
            cause = blame(faults, holder, ttl_ns, candidates)
            if cause is None:
                samples["none"].append((successor.term.start_ns - holder.work_end_ns) / NS)
            else:
                samples[cause.kind].append((successor.term.start_ns - cause.start_ns) / NS)
    return dict(samples)


def blame(
    faults: Sequence[Fault], holder: WorkingTerm, ttl_ns: int, candidates: frozenset[str]
) -> Fault | None:
    """The fault that ended ``holder``'s work, if any: started by the end of its
    work (+100 ms) and not over more than a TTL before it."""
    suspects = [
        fault
        for fault in faults
        if holder.term.start_ns <= fault.start_ns <= holder.work_end_ns + 100_000_000
        and (fault.end_ns or fault.start_ns) + ttl_ns >= holder.work_end_ns
        and (fault.target not in candidates or fault.target == holder.term.instance_id)
    ]
    own = [fault for fault in suspects if fault.target in candidates]
    chosen = own or suspects
    return max(chosen, key=lambda fault: fault.start_ns) if chosen else None


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100])."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


@dataclass
class CampaignResult:
    backend: str
    seed: int
    duration: float
    ttl: float
    candidates: int
    resources: tuple[str, ...]
    faults: list[Fault]
    check: CheckReport
    availability: dict[str, float]
    failovers: dict[str, list[float]]
    writes_accepted: int
    writes_refused: int
    recovered: bool
    leftover: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.check.ok and self.recovered and not self.leftover

    def summary(self) -> dict[str, object]:
        """The numbers as JSON-ready data (failover samples included)."""
        return {
            "backend": self.backend,
            "seed": self.seed,
            "duration": self.duration,
            "faults": dict(Counter(fault.kind for fault in self.faults)),
            "terms": self.check.terms,
            "operations": self.check.operations,
            "fenced": self.check.fenced_operations,
            "excused": len({id(excusal.operation) for excusal in self.check.excusals}),
            "violations": [str(violation) for violation in self.check.violations],
            "availability": self.availability,
            "failovers": self.failovers,
            "writes_accepted": self.writes_accepted,
            "writes_refused": self.writes_refused,
            "recovered": self.recovered,
            "leftover": self.leftover,
        }

    def markdown(self) -> str:
        """The campaign's numbers as markdown, with the seed to replay it."""
        kinds = Counter(fault.kind for fault in self.faults)
        check = self.check
        excused = len({id(excusal.operation) for excusal in check.excusals})
        mean_availability = sum(self.availability.values()) / max(1, len(self.availability))
        lines = [
            f"### {self.backend}, seed {self.seed}, {self.duration:g} s",
            "",
            f"Replay: `python -m chaos --backend {self.backend} --seed {self.seed} "
            f"--duration {self.duration:g}`; {self.candidates} candidates, "
            f"{len(self.resources)} resources, TTL {self.ttl:g} s.",
            "",
            "| measure | value |",
            "|---|---|",
            f"| faults injected | {len(self.faults)} |",
            f"| terms | {check.terms} |",
            f"| operations checked | {check.operations} |",
            f"| refused by fencing | {check.fenced_operations} |",
            f"| excused (paused, not completed) | {excused} |",
            f"| **violations** | **{len(check.violations)}** |",
            "| availability | "
            + ", ".join(f"{r} {v:.1%}" for r, v in sorted(self.availability.items()))
            + f" (mean {mean_availability:.1%}) |",
            f"| store writes accepted / refused | {self.writes_accepted} / {self.writes_refused} |",
            f"| every resource worked on again after healing | "
            f"{'yes' if self.recovered else 'NO'} |",
            f"| processes left running | {len(self.leftover)} |",
            "",
            "| fault kind | injected | masters lost | failover p50 | p90 | max |",
            "|---|---|---|---|---|---|",
        ]
        for kind in sorted(set(kinds) | set(self.failovers)):
            times = self.failovers.get(kind, [])
            if times:
                p50, p90, top = (
                    f"{percentile(times, 50):.2f} s",
                    f"{percentile(times, 90):.2f} s",
                    f"{max(times):.2f} s",
                )
            else:
                p50 = p90 = top = "-"
            lines.append(f"| {kind} | {kinds[kind]} | {len(times)} | {p50} | {p90} | {top} |")
        if check.violations:
            lines += ["", "Violations:", ""]
            lines += [f"* {violation}" for violation in check.violations[:20]]
        if self.leftover:
            lines += ["", "Left running: " + ", ".join(self.leftover)]
        return "\n".join(lines)
