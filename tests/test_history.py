"""The history recorder and safety checker of ``election2.testing.history``.

Synthetic histories give every violation kind and the excusals; live ones
record real workers on the memory mechanism under trio's MockClock.
"""

from __future__ import annotations

from contextlib import suppress
from pathlib import Path

import pytest
import trio

from election2 import Election, MechanismUnavailableError
from election2.testing import (
    History,
    HistoryRecorder,
    MemoryBackend,
    OperationRecord,
    Outcome,
    PauseRecord,
    Record,
    TermRecord,
    check_history,
    load_history,
    record_from_json,
    record_to_json,
)

MS = 1_000_000  # nanoseconds


def op(
    instance: str,
    token: int,
    start_ms: int,
    end_ms: int,
    *,
    deadline_ms: int = 10_000,
    outcome: Outcome = "ok",
    resource: str = "r",
) -> OperationRecord:
    return OperationRecord(
        resource, instance, token, start_ms * MS, end_ms * MS, deadline_ms * MS, outcome
    )


def term(
    instance: str, token: int, start_ms: int, end_ms: int | None, *, resource: str = "r"
) -> TermRecord:
    return TermRecord(
        resource, instance, token, start_ms * MS, None if end_ms is None else end_ms * MS
    )


def pause(instance: str, start_ms: int, end_ms: int) -> PauseRecord:
    return PauseRecord(instance, start_ms * MS, end_ms * MS)


# -- synthetic histories ----------------------------------------------------------------


def test_back_to_back_terms_are_clean() -> None:
    history = History(
        terms=[term("a", 1, 0, 200), term("b", 2, 200, 400), term("a", 3, 400, None)],
        operations=[
            op("a", 1, 0, 100, deadline_ms=200),
            op("a", 1, 100, 200, deadline_ms=200, outcome="cancelled"),
            op("b", 2, 200, 300, deadline_ms=400),
            op("b", 2, 250, 400, deadline_ms=400),  # concurrent with b's first: one term
            op("a", 3, 400, 500),
        ],
    )
    report = check_history(history)
    assert report.ok, report
    assert (report.terms, report.operations, report.excusals) == (3, 5, [])
    assert str(report).startswith("history check: ok; 3 term(s), 5 operation(s) checked")


def test_overlap_of_two_terms() -> None:
    first, second = op("a", 1, 0, 100), op("b", 2, 50, 150)
    report = check_history(History(operations=[second, first]))
    [violation] = report.violations
    assert violation.kind == "overlap"
    assert violation.records == (first, second)
    assert "'r'" in violation.message and "a's operation with token 1" in violation.message
    assert "b's operation with token 2" in violation.message
    assert not report.ok and "1 violation(s)" in report.summary()


def test_same_token_of_two_instances_overlaps() -> None:
    report = check_history(History(operations=[op("a", 1, 0, 100), op("b", 1, 50, 150)]))
    assert [v.kind for v in report.violations] == ["overlap"]


def test_each_overlapping_operation_is_reported_once() -> None:
    long = op("a", 1, 0, 1000)
    shorts = [op("b", 2, start, start + 10) for start in range(100, 500, 100)]
    report = check_history(History(operations=[long, *shorts]))
    assert [v.records for v in report.violations] == [(long, short) for short in shorts]


def test_fencing_order_of_operations() -> None:
    newer, older = op("a", 2, 0, 100), op("b", 1, 200, 300)
    report = check_history(History(operations=[newer, older]))
    [violation] = report.violations
    assert (violation.kind, violation.records) == ("fencing-order", (newer, older))
    assert "used token 1 after a's operation with token 2" in violation.message


def test_operation_refused_by_fencing_is_not_a_fencing_order_violation() -> None:
    refused = op("b", 1, 200, 300, outcome="fenced")
    report = check_history(History(operations=[op("a", 2, 0, 100), refused]))
    assert report.ok, report
    assert report.fenced_operations == 1
    # A refused token is not one the store saw: it sets no order for later ones.
    report = check_history(
        History(operations=[op("a", 5, 0, 100, outcome="fenced"), op("b", 1, 200, 300)])
    )
    assert report.ok, report


def test_after_deadline_and_its_tolerance() -> None:
    on_time = op("a", 1, 0, 1020, deadline_ms=1000, outcome="cancelled")  # within 20 ms
    late = op("a", 1, 0, 1021, deadline_ms=1000, outcome="cancelled")
    assert check_history(History(operations=[on_time])).ok
    [violation] = check_history(History(operations=[late])).violations
    assert (violation.kind, violation.records) == ("after-deadline", (late,))
    assert "ended 21.000 ms after its term's deadline 1.000000s" in violation.message
    # An "ok" operation gets the same tolerance; a zero tolerance allows nothing.
    assert check_history(History(operations=[op("a", 1, 0, 1020, deadline_ms=1000)])).ok
    exact = op("a", 1, 0, 1000, deadline_ms=1000)
    one_ns_late = OperationRecord("r", "a", 1, 0, 1000 * MS + 1, 1000 * MS, "ok")
    assert check_history(History(operations=[exact]), deadline_tolerance_ns=0).ok
    assert not check_history(History(operations=[one_ns_late]), deadline_tolerance_ns=0).ok


def test_token_held_by_two_instances() -> None:
    first, second = term("a", 1, 0, 100), term("b", 1, 100, 200)
    [violation] = check_history(History(terms=[first, second])).violations
    assert (violation.kind, violation.records) == ("token-reuse", (first, second))
    assert "token 1 held by a, b" in violation.message


def test_instance_whose_token_went_down() -> None:
    first, second = term("a", 5, 0, 100), term("a", 4, 300, 400)
    [violation] = check_history(History(terms=[second, first])).violations
    assert (violation.kind, violation.records) == ("token-reuse", (first, second))
    assert "a took token 4 at 0.300000s after token 5" in violation.message


def test_term_token_below_an_earlier_term_of_another_instance() -> None:
    first, second = term("a", 5, 0, 100), term("b", 4, 300, None)
    [violation] = check_history(History(terms=[first, second])).violations
    assert (violation.kind, violation.records) == ("fencing-order", (first, second))


def test_paused_and_cancelled_operation_is_excused() -> None:
    stale = op("a", 1, 0, 300, deadline_ms=100, outcome="cancelled")
    report = check_history(
        History(
            operations=[stale, op("b", 2, 150, 200), op("b", 2, 210, 260)],
            pauses=[pause("a", 50, 250)],
        )
    )
    assert report.ok, report
    assert sorted((e.kind, e.operation) for e in report.excusals) == [
        ("after-deadline", stale),
        ("overlap", stale),
    ]
    assert "1 operation(s) excused as paused and not completed" in report.summary()


def test_paused_operation_starting_later_is_excused() -> None:
    # The paused, fenced operation starts while the other term's one runs.
    refused = op("a", 1, 150, 180, outcome="fenced")
    report = check_history(
        History(operations=[op("b", 2, 100, 200), refused], pauses=[pause("a", 140, 170)])
    )
    assert report.ok, report
    assert [(e.kind, e.operation) for e in report.excusals] == [("overlap", refused)]


def test_operation_started_on_resuming_past_the_deadline_is_excused() -> None:
    # Resumed after a long pause, a worker starts one more operation under its
    # old token, cancelled at its first checkpoint: no completed work.
    newer = op("b", 2, 100, 200)
    resumed = op("a", 1, 299, 300, deadline_ms=100, outcome="cancelled")
    report = check_history(History(operations=[newer, resumed], pauses=[pause("a", 50, 300)]))
    assert report.ok, report
    assert sorted(e.kind for e in report.excusals) == ["after-deadline", "fencing-order"]
    completed = op("a", 1, 299, 300, deadline_ms=100)
    report = check_history(History(operations=[newer, completed], pauses=[pause("a", 50, 300)]))
    assert sorted(v.kind for v in report.violations) == ["after-deadline", "fencing-order"]


def test_paused_operation_that_completed_is_never_excused() -> None:
    stale, fresh = op("a", 1, 0, 300, deadline_ms=100), op("b", 2, 150, 200)
    report = check_history(History(operations=[stale, fresh], pauses=[pause("a", 50, 250)]))
    assert sorted(v.kind for v in report.violations) == ["after-deadline", "overlap"]
    assert report.excusals == []


def test_pause_of_another_instance_or_another_time_excuses_nothing() -> None:
    stale = op("a", 1, 0, 300, deadline_ms=100, outcome="cancelled")
    fresh = op("b", 2, 150, 200)
    for pauses in ([pause("b", 50, 250)], [pause("a", 300, 400)], [pause("a", -50, 0)]):
        report = check_history(History(operations=[stale, fresh], pauses=pauses))
        assert sorted(v.kind for v in report.violations) == ["after-deadline", "overlap"]


def test_resources_are_checked_independently() -> None:
    history = History(
        terms=[term("a", 1, 0, 100, resource="x"), term("b", 1, 0, 100, resource="y")],
        operations=[
            op("a", 7, 0, 100, resource="x"),
            op("b", 3, 50, 150, resource="y"),
            op("c", 1, 200, 300, resource="z"),
        ],
    )
    assert check_history(history).ok


def test_term_records_of_one_term_merge() -> None:
    records = [
        # two scopes of a's term 1, each written on entry and exit
        term("a", 1, 0, None),
        term("a", 1, 0, 100),
        term("a", 1, 200, None),
        term("a", 1, 200, 300),
        # b's term 2: one scope still open when its process died
        term("b", 2, 400, None),
        term("b", 2, 400, 500),
        term("b", 2, 450, None),
    ]
    assert History.from_records(records).terms == [term("a", 1, 0, 300), term("b", 2, 400, None)]


def test_records_round_trip_through_json() -> None:
    for record in (term("a", 1, 0, None), op("a", 1, 0, 5, outcome="fenced"), pause("a", 1, 2)):
        assert record_from_json(record_to_json(record)) == record
    with pytest.raises(ValueError, match="not a history record"):
        record_from_json('{"record": "vote"}')
    with pytest.raises(ValueError, match="malformed pause record"):
        record_from_json('{"record": "pause", "instance_id": "a"}')


def test_load_history_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    path.write_text(record_to_json(pause("a", 1, 2)) + "\n\nnot json\n")
    with pytest.raises(ValueError, match=r"history\.jsonl:3: "):
        load_history(path)


def test_checking_a_hundred_thousand_operations() -> None:
    operations = []
    for resource in range(10):
        for token in range(1, 101):
            base = token * 100 * MS
            for i in range(100):  # two at a time, within the term
                start = base + (i // 2) * 2 * MS
                operations.append(
                    OperationRecord(
                        f"r{resource}",
                        f"i{token % 3}",
                        token,
                        start,
                        start + 2 * MS,
                        base + 100 * MS,
                        "ok",
                    )
                )
    report = check_history(History(operations=operations))
    assert report.ok and report.operations == 100_000


# -- recording live ----------------------------------------------------------------------


def mock_ns() -> int:
    return round(trio.current_time() * 1e9)


class StaleTokenError(Exception):
    """A fenced store refused a token below the highest it saw."""


class FencedStore:
    """Refuses writes under a token below the highest it saw. (Synchronous: a
    write that arrives after a pause has no checkpoint left to be cancelled at.)"""

    def __init__(self) -> None:
        self.highest = 0

    def write(self, token: int) -> None:
        if token < self.highest:
            raise StaleTokenError(f"token {token} < {self.highest}")
        self.highest = token


async def guarded_worker(election: Election, recorder: HistoryRecorder) -> None:
    """Campaign; while master, do 0.25 s operations, each recorded."""
    while True:
        try:
            await election.await_mastership()
        except MechanismUnavailableError:
            await trio.sleep(0.5)
            continue
        async with election.with_mastership() as scope:
            with recorder.term(election, scope) as term:
                while True:
                    with term.operation():
                        await trio.sleep(0.25)


@pytest.mark.autojump_clock
async def test_live_elections_record_a_safe_history(backend: MemoryBackend) -> None:
    recorders = {name: HistoryRecorder(name, clock=mock_ns) for name in "abc"}
    async with (
        backend.open_factory("a") as fa,
        backend.open_factory("b") as fb,
        backend.open_factory("c") as fc,
    ):
        elections = {
            (factory.instance_id, resource): await factory.new_election(resource)
            for factory in (fa, fb, fc)
            for resource in ("x", "y")
        }

        def leader(resource: str) -> str:
            name = backend.current_leader(resource)
            assert name is not None
            return name

        async with trio.open_nursery() as nursery:
            for (name, _), election in elections.items():
                nursery.start_soon(guarded_worker, election, recorders[name])
            await trio.sleep(3)
            for resource in ("x", "y"):
                await elections[leader(resource), resource].resign()
            await trio.sleep(3)
            crashed = leader("x")
            backend.crash(crashed)
            await trio.sleep(15)
            backend.heal(crashed)
            partitioned = leader("y")
            backend.partition(partitioned)
            await trio.sleep(15)
            backend.heal(partitioned)
            await trio.sleep(5)
            nursery.cancel_scope.cancel()
    history = History.from_records(r for recorder in recorders.values() for r in recorder.records)
    report = check_history(history)
    assert report.ok, report
    assert report.operations > 100
    assert {t.instance_id for t in history.terms} == {"a", "b", "c"}
    assert {(t.resource_id, t.token) for t in history.terms} == {
        (t.resource_id, t.token) for t in backend.history
    }


@pytest.mark.autojump_clock
async def test_checker_catches_work_past_the_end_of_mastership(backend: MemoryBackend) -> None:
    """a shields its operation from cancellation: it runs on after a's lease
    expired and b was elected."""
    ra, rb = HistoryRecorder("a", clock=mock_ns), HistoryRecorder("b", clock=mock_ns)

    async def unsafe_worker(election: Election) -> None:
        await election.await_mastership()
        async with election.with_mastership() as scope:
            with ra.term(election, scope) as term, term.operation():
                with trio.CancelScope(shield=True):
                    await trio.sleep(30)

    async with backend.open_factory("a") as fa, backend.open_factory("b") as fb:
        ea, eb = await fa.new_election("x"), await fb.new_election("x")
        async with trio.open_nursery() as nursery:
            await ea.await_mastership()
            nursery.start_soon(unsafe_worker, ea)
            nursery.start_soon(guarded_worker, eb, rb)
            await trio.sleep(1)
            backend.partition("a")
            await trio.sleep(35)
            nursery.cancel_scope.cancel()
    report = check_history(History.from_records([*ra.records, *rb.records]))
    [shielded] = [op for op in ra.records if isinstance(op, OperationRecord)]
    assert shielded.outcome == "ok" and shielded.end_ns - shielded.start_ns == 30_000 * MS
    assert {v.kind for v in report.violations} == {"overlap", "after-deadline"}
    assert all(shielded in v.records for v in report.violations)
    assert {v.records[-1].instance_id for v in report.violations if v.kind == "overlap"} == {"b"}


@pytest.mark.autojump_clock
async def test_fencing_closes_the_pause_gap(backend: MemoryBackend) -> None:
    """a's process "pauses" mid-operation (renewals stop, the task sleeps
    shielded); b takes over and writes; a resumes and its stale write is
    refused by the fenced store, so the history is safe."""
    store = FencedStore()
    harness = HistoryRecorder("harness", clock=mock_ns)
    ra = HistoryRecorder("a", clock=mock_ns, fenced_errors=(StaleTokenError,))
    rb = HistoryRecorder("b", clock=mock_ns, fenced_errors=(StaleTokenError,))

    async def writer(election: Election, recorder: HistoryRecorder) -> None:
        await election.await_mastership()
        async with election.with_mastership() as scope:
            with recorder.term(election, scope) as term:
                assert term.token is not None
                for _ in range(5):
                    with term.operation():
                        store.write(term.token)
                        await trio.sleep(0.1)

    async def paused_writer(election: Election) -> None:
        await election.await_mastership()
        async with election.with_mastership() as scope:
            with ra.term(election, scope) as term, suppress(StaleTokenError), term.operation():
                assert term.token is not None
                with harness.paused("a"), trio.CancelScope(shield=True):
                    backend.crash("a")
                    await trio.sleep(20)
                    backend.heal("a")
                store.write(term.token)

    async with backend.open_factory("a") as fa, backend.open_factory("b") as fb:
        ea, eb = await fa.new_election("x"), await fb.new_election("x")
        await ea.await_mastership()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(paused_writer, ea)
            nursery.start_soon(writer, eb, rb)
    records = [*harness.records, *ra.records, *rb.records]
    refused = [r for r in records if isinstance(r, OperationRecord) and r.instance_id == "a"]
    assert [r.outcome for r in refused] == ["fenced"]
    report = check_history(History.from_records(records))
    assert report.ok, report
    assert report.fenced_operations == 1
    assert {(e.kind, e.operation) for e in report.excusals} == {
        ("overlap", refused[0]),
        ("after-deadline", refused[0]),
    }


@pytest.mark.autojump_clock
async def test_outcomes_of_operations(backend: MemoryBackend) -> None:
    recorder = HistoryRecorder("a", clock=mock_ns, fenced_errors=(StaleTokenError,))
    async with backend.open_factory("a") as fa:
        election = await fa.new_election("x")
        await election.await_mastership()
        async with election.with_mastership() as scope:
            with recorder.term(election, scope) as term:
                with term.operation():
                    await trio.sleep(1)
                with term.operation() as operation:
                    operation.fenced()
                with pytest.raises(StaleTokenError), term.operation():
                    raise StaleTokenError
                with pytest.raises(KeyError), term.operation():
                    raise KeyError
                with term.operation():
                    await election.resign()
                    await trio.sleep(1)
        assert scope.cancelled_caught
    operations = [r for r in recorder.records if isinstance(r, OperationRecord)]
    assert [r.outcome for r in operations] == ["ok", "fenced", "fenced", "error", "cancelled"]
    first = operations[0]
    assert (first.start_ns, first.end_ns) == (0, 1000 * MS)
    assert first.deadline_ns == round(backend.ttl * 0.99 * 1e9) - 2 * MS  # lease minus drift
    assert recorder.outcome_of(BaseExceptionGroup("", [trio.Cancelled._create()])) == "cancelled"
    terms = [r for r in recorder.records if isinstance(r, TermRecord)]
    assert [(t.token, t.start_ns, t.end_ns) for t in terms] == [(1, 0, None), (1, 0, 1000 * MS)]


@pytest.mark.autojump_clock
async def test_no_term_records_nothing(backend: MemoryBackend) -> None:
    recorder = HistoryRecorder("a", clock=mock_ns)
    async with backend.open_factory("a") as fa:
        election = await fa.new_election("x")
        async with election.with_mastership() as scope:
            with recorder.term(election, scope) as term, term.operation():
                assert term.token is None
                await trio.sleep(1)
        with pytest.raises(ValueError, match="instance 'a' given to the recorder of 'b'"):
            with HistoryRecorder("b").term(election, scope):
                pass
    assert recorder.records == []


def as_json_lines(history: History) -> list[str]:
    records: list[Record] = [*history.terms, *history.operations, *history.pauses]
    return sorted(map(record_to_json, records))


@pytest.mark.autojump_clock
async def test_files_of_two_recorders_load_as_one_history(
    backend: MemoryBackend, tmp_path: Path
) -> None:
    shared, own = tmp_path / "shared.jsonl", tmp_path / "b.jsonl"
    in_memory = [HistoryRecorder(name, clock=mock_ns) for name in "ab"]
    to_files = [
        HistoryRecorder("a", shared, clock=mock_ns),
        HistoryRecorder("b", own, clock=mock_ns),
    ]
    async with backend.open_factory("a") as fa, backend.open_factory("b") as fb:
        ea, eb = await fa.new_election("x"), await fb.new_election("x")

        async def work(election: Election, index: int) -> None:
            """One term, recorded in memory and to a file at once."""
            await election.await_mastership()
            async with election.with_mastership() as scope:
                with (
                    in_memory[index].term(election, scope) as term,
                    to_files[index].term(election, scope) as same_term,
                    term.operation(),
                    same_term.operation(),
                ):
                    await trio.sleep(1)
            await election.resign()

        async with trio.open_nursery() as nursery:
            for election, index in ((ea, 0), (eb, 1)):
                nursery.start_soon(work, election, index)
    for recorder in to_files:
        recorder.close()
    with HistoryRecorder("harness", shared, clock=mock_ns) as harness:
        harness.write(pause("b", 1, 2))
    expected = History.from_records(
        [*in_memory[0].records, *in_memory[1].records, pause("b", 1, 2)]
    )
    loaded = load_history(shared, own)
    assert as_json_lines(loaded) == as_json_lines(expected)
    assert len(loaded.terms) == 2 and check_history(loaded).ok
