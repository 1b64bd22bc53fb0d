"""The deploy-safety check: flags inserted, removed, reordered and renamed steps; accepts an
appended step and a change behind a patch marker; never executes a step."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any
from uuid import UUID

import orjson
import pytest
from click.testing import CliRunner

from auditwf import CALLS, STOP_IN_SHIP, v1, v2, v3
from engine import (
    CheckResult,
    Engine,
    RunParkedError,
    RunStatus,
    Workflow,
    check_history,
    step,
    workflow,
)
from engine.events import RunEvent
from projections import Projector
from stepstone.cli import main

calls: Counter[str] = Counter()


def _step(name: str) -> Callable[[], str]:
    def fn() -> str:
        calls[name] += 1
        return name

    fn.__name__ = name
    return step(fn)


a, b, c, d, x, b2 = (_step(n) for n in ("a", "b", "c", "d", "x", "b2"))


def _wf(*steps: Callable[[], str]) -> Workflow[..., Any]:
    @workflow("audit-shapes")
    def body() -> list[str]:
        return [s() for s in steps]

    return body


@pytest.fixture
def history(engine: Engine) -> Iterator[list[RunEvent]]:
    """A completed run of a, b, c."""
    run_id = engine.run(_wf(a, b, c)).run_id
    return [e for _, e in engine.store.events_with_positions(run_id)]


@pytest.mark.parametrize(
    ("steps", "position", "expected", "actual"),
    [
        ((a, x, b, c), 1, "b#0", "x#0"),  # inserted
        ((a, c), 1, "b#0", "c#0"),  # removed
        ((b, a, c), 0, "a#0", "b#0"),  # reordered
        ((a, b2, c), 1, "b#0", "b2#0"),  # renamed
        ((a, b), 2, "c#0", "<end of workflow>"),  # last step removed
    ],
    ids=["inserted", "removed", "reordered", "renamed", "truncated"],
)
def test_changed_step_sequences_diverge(
    history: list[RunEvent], steps: tuple[Callable[[], str], ...], position: int,
    expected: str, actual: str,
) -> None:
    before = calls.copy()
    result = check_history(_wf(*steps), history)
    assert calls == before, "the check executed a step"
    assert not result.ok
    assert (result.outcome, result.position, result.expected, result.actual) == (
        "diverges", position, expected, actual)
    assert expected in result.message
    assert actual in result.message


def test_an_appended_step_and_the_same_code_are_accepted(history: list[RunEvent]) -> None:
    before = calls.copy()
    same = check_history(_wf(a, b, c), history)
    appended = check_history(_wf(a, b, c, d), history)
    assert calls == before
    assert (same.outcome, same.steps_replayed) == ("replays", 3)
    assert (appended.ok, appended.outcome, appended.next_step) == (True, "resumes", "d#0")


def _in_flight(engine: Engine) -> UUID:
    """A v1 run stopped inside `ship`, after reserve and charge completed."""
    STOP_IN_SHIP["on"] = True
    try:
        result = engine.run(v1, {"order": "o-1"})
    finally:
        STOP_IN_SHIP["on"] = False
    assert result.status is RunStatus.PREEMPTED
    return result.run_id


def _check(engine: Engine, run_id: UUID, wf: Workflow[..., Any]) -> CheckResult:
    return check_history(wf, [e for _, e in engine.store.events_with_positions(run_id)])


def test_patch_marker_old_runs_replay_the_old_path_new_runs_the_new(engine: Engine) -> None:
    old = _in_flight(engine)
    before = CALLS.copy()
    assert _check(engine, old, v2).outcome == "diverges"
    patched_check = _check(engine, old, v3)
    assert before == CALLS, "the check executed a step"
    assert (patched_check.outcome, patched_check.next_step) == ("resumes", "ship#0")

    # Resumed with v3, the old run keeps the old path: no fraud check, no marker.
    engine.register(v3)
    assert engine.resume(old).status is RunStatus.COMPLETED
    assert CALLS - before == Counter({"ship": 1})
    assert engine.store.load(old).state.patches == []
    # A new run takes the new path and records the marker where it took it.
    new = engine.run(v3, {"order": "o-2"})
    assert new.output == ["reserved o-2", "charged o-2", "shipped o-2"]
    kinds = [type(e).__name__ for _, e in engine.store.events_with_positions(new.run_id)]
    assert kinds[kinds.index("PatchMarked") - 1] == "StepCompleted"  # right after reserve
    assert engine.store.load(new.run_id).state.patches == ["fraud-check"]
    assert CALLS["fraud_check"] - before["fraud_check"] == 1
    # ...and replays it again (the marker says so), with v3 and v1 alike telling it apart.
    assert _check(engine, new.run_id, v3).outcome == "replays"
    assert _check(engine, new.run_id, v1).outcome == "diverges"


def test_check_command_gates_a_deploy_and_parked_runs_resume_with_fixed_code(
    engine: Engine, store_url: str
) -> None:
    run_id = _in_flight(engine)
    done = engine.run(v1, {"order": "o-done"}).run_id
    before = CALLS.copy()

    def invoke(*args: str) -> Any:
        return CliRunner().invoke(main, [*args, "--db", store_url])

    bad = invoke("replay", "--check", "auditwf:v2")
    assert bad.exit_code == 1, bad.output
    assert f"FAIL {run_id}" in bad.stdout
    assert "'charge#0'" in bad.stdout
    assert str(done) not in bad.stdout  # finished runs only with --all
    all_runs = invoke("replay", "--check", "auditwf:v3", "--all", "--json")
    assert all_runs.exit_code == 0, all_runs.output
    lines = [orjson.loads(line) for line in all_runs.stdout.splitlines()]
    assert {(r["run_id"], r["ok"]) for r in lines} == {(str(run_id), True), (str(done), True)}
    assert before == CALLS, "the check executed a step"

    # Deployed anyway: the resume parks the run, and nothing else is written.
    events_before = len(engine.history(run_id))
    with Engine.from_url(store_url, workflows=[v2]) as deployed, \
            pytest.raises(RunParkedError, match="parked"):
        deployed.resume(run_id)
    log = engine.history(run_id)
    assert len(log) == events_before + 1
    assert log[-1].event_type == "RunParked"
    assert log[-1].fields["expected"] == "charge#0"
    assert log[-1].fields["actual"] == "fraud_check#0"
    info = engine.status(run_id)
    assert info.status is RunStatus.PARKED
    assert "charge#0" in (info.parked_reason or "")
    status = invoke("status", str(run_id))
    assert "parked" in status.stdout
    with Projector(store_url) as projector:
        projector.catch_up()
        row = runs_row(projector, run_id)
        stats = view_row(projector, "workflow_stats", "workflow", "audit-orders")
    assert (row["status"], row["last_error_type"]) == ("parked", "NonDeterminismError")
    assert (stats["parked"], stats["completed"], stats["runs"]) == (1, 1, 2)
    # Resuming again with the same bad code: still parked, no second event.
    again = invoke("resume", str(run_id), "--workflow", "auditwf:v2")
    assert again.exit_code == 3  # parked
    assert "parked" in again.stderr
    assert len(engine.history(run_id)) == events_before + 1
    # Compatible code is back: it resumes and completes.
    fixed = invoke("resume", str(run_id), "--workflow", "auditwf:v3")
    assert fixed.exit_code == 0, fixed.output
    log = engine.history(run_id)
    resumed = [e for e in log if e.event_type == "RunResumed"]
    assert resumed[-1].fields["reason"] == "after_parking"
    assert engine.status(run_id).status is RunStatus.COMPLETED


def view_row(projector: Projector, view_name: str, key: str, value: object) -> dict[str, Any]:
    """The row of a view's public table whose `key` column is `value`."""
    view = next(v for v in projector.views if v.name == view_name)
    table = view.bound[0]
    with projector.db.transaction() as tx:
        rows = tx.fetch(f"SELECT * FROM {table.qname}")
    found = [dict(zip(table.spec.column_names, r, strict=True)) for r in rows]
    return next(r for r in found if str(r[key]) == str(value))


def runs_row(projector: Projector, run_id: UUID) -> dict[str, Any]:
    """The runs view's row of one run."""
    return view_row(projector, "runs", "run_id", run_id)


def test_a_run_waiting_on_a_durable_sleep_resumes_cleanly_without_waiting() -> None:
    import time
    import uuid
    from datetime import UTC, datetime, timedelta

    from engine.aggregate import WorkflowRun
    from engine.durable import sleep

    @workflow("audit-sleepy")
    def sleepy() -> list[str]:
        first = a()
        sleep(3600)
        return [first, b()]

    t = datetime(2026, 1, 1, tzinfo=UTC)
    run = WorkflowRun.start(
        uuid.uuid4(), at=t, worker="w", workflow="audit-sleepy", workflow_version=1,
        entrypoint="tests:sleepy", code_fingerprint="f", input={}, input_digest="d",
        idempotency_key=None,
    )
    run.start_step("a#0", "a", 1, at=t, worker="w")
    run.complete_step("a#0", 1, "a", 0.0, at=t, worker="w")
    run.start_timer("sleep#0", t + timedelta(days=3650), 3600.0, at=t, worker="w")
    before, started = calls.copy(), time.monotonic()
    result = check_history(sleepy, run.collect_events())  # type: ignore[arg-type]
    assert time.monotonic() - started < 5
    assert calls == before
    assert (result.outcome, result.next_step, result.steps_replayed) == ("resumes", "sleep#0", 1)
