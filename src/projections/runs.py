"""The runs view: one row per run, what the progress API lists and a user queries first.

Its status, steps done, steps started and attempts agree with the engine's own replay
(`engine.RunInfo`); the tests check that run by run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from engine.events import (
    CheckpointValidated,
    ChildFinished,
    ChildStarted,
    MessageAwaited,
    MessageReceived,
    PatchMarked,
    RunCancelled,
    RunFailed,
    RunParked,
    RunPreempted,
    RunStarted,
    RunTimedOut,
    StepCheckpointed,
    StepCompleted,
    StepFailed,
    StepPreempted,
    StepReused,
    StepStarted,
    TimerFired,
    TimerStarted,
    ValuePublished,
)
from engine.status import RunStatus, StepStatus
from projections.facts import Fact
from projections.sql import Rows, Table, Tx
from projections.view import STATUS_TEXT_AFTER, TERMINAL_TEXT, Events, View, touched_runs

RUNS = Table(
    name="runs",
    columns=(
        ("run_id", "uuid"),
        ("workflow", "text"),
        ("workflow_version", "int"),
        ("status", "text"),
        ("current_step", "text"),
        ("current_step_status", "text"),
        ("steps_done", "int"),
        ("steps_started", "int"),
        ("progress_done", "int"),
        ("progress_total", "int"),
        ("attempts", "int"),
        ("retries", "int"),
        ("preemptions", "int"),
        ("crashes", "int"),
        ("interruptions", "int"),
        ("worker", "text"),
        ("started_at", "ts"),
        ("updated_at", "ts"),
        ("finished_at", "ts"),
        ("last_error_type", "text"),
        ("last_error_message", "text"),
        ("last_error_step", "text"),
        ("last_position", "int"),
    ),
    key=("run_id",),
    # started_at: the API lists runs newest first, a page at a time, and by status (a range
    # read of the status index, where the time index alone walked every newer run of other
    # statuses); last_position: its stream asks which runs changed since a position.
    indexes=(("workflow", "status"), ("started_at", "run_id"),
             ("status", "started_at", "run_id"), ("last_position",)),
)
_COLUMNS = RUNS.column_names


def _new_row(run_id: str) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(_COLUMNS)
    row.update(run_id=run_id, workflow="", workflow_version=0, status=RunStatus.PENDING.value)
    for counter in ("steps_done", "steps_started", "attempts", "retries", "preemptions",
                    "crashes", "interruptions"):
        row[counter] = 0
    return row


# Events with a case in `_apply`, and the status changes (every event also stamps the row's
# time, worker and position).
_CASES: Events = frozenset({
    StepStarted, StepCheckpointed, StepCompleted, StepFailed, StepPreempted, TimerStarted,
    TimerFired, RunStarted, RunPreempted, StepReused, RunParked, RunFailed, RunCancelled,
    RunTimedOut, MessageAwaited, MessageReceived, ValuePublished, ChildStarted, ChildFinished,
})
_HANDLES = _CASES | frozenset(STATUS_TEXT_AFTER)
_RUNNING, _FAILED, _PREEMPTED, _WAITING = (
    s.value for s in (StepStatus.RUNNING, StepStatus.FAILED, StepStatus.PREEMPTED,
                      StepStatus.WAITING)
)


class RunsView(View):
    name = "runs"
    tables = (RUNS,)
    handles = _HANDLES
    ignores = frozenset({PatchMarked, CheckpointValidated})  # stamped only, like any event

    def load(self, tx: Tx, facts: Sequence[Fact]) -> Rows:
        return tx.select(self.bound[0], _COLUMNS, touched_runs(facts))

    def apply(self, tx: Tx, facts: Sequence[Fact], loaded: list[list[Any]]) -> None:
        rows = {values[0]: dict(zip(_COLUMNS, values, strict=True)) for values in loaded}
        for fact in facts:
            row = rows.get(fact.run_id)
            if row is None:
                row = rows[fact.run_id] = _new_row(fact.run_id)
            _apply(row, fact)
        tx.upsert(self.bound[0], [tuple(row[c] for c in _COLUMNS) for row in rows.values()])


def _apply(row: dict[str, Any], fact: Fact) -> None:
    kind, d = fact.kind, fact.data
    ts = d["timestamp"]
    row["updated_at"] = ts
    row["worker"] = d["worker_id"]
    row["last_position"] = fact.position
    status = STATUS_TEXT_AFTER.get(kind)
    if status is not None:
        row["status"] = status
    if kind is StepStarted:
        key = d["step_key"]
        same = key == row["current_step"]
        if same and row["current_step_status"] == _RUNNING:
            # The previous attempt never recorded an end: its worker died.
            row["crashes"] += 1
            row["interruptions"] += 1
        if not same:
            row["steps_started"] += 1
            row["progress_done"] = row["progress_total"] = None
        row["attempts"] += 1
        if d["attempt"] > 1:
            row["retries"] += 1
        row["current_step"] = key
        row["current_step_status"] = _RUNNING
    elif kind is StepCheckpointed:
        if d["step_key"] == row["current_step"] and d.get("progress_total") is not None:
            row["progress_done"] = d.get("progress_done")
            row["progress_total"] = d["progress_total"]
    elif kind is StepCompleted:
        row["steps_done"] += 1
        if d["step_key"] == row["current_step"]:
            _leave_step(row)
    elif kind is StepFailed:
        row["last_error_type"] = d["error_type"]
        row["last_error_message"] = d["message"]
        row["last_error_step"] = d["step_key"]
        if d["step_key"] == row["current_step"]:
            row["current_step_status"] = _FAILED
    elif kind is StepPreempted:
        if d["step_key"] == row["current_step"]:
            row["current_step_status"] = _PREEMPTED
    elif kind is TimerStarted or kind is MessageAwaited or kind is ChildStarted:  # waits
        row["steps_started"] += 1
        row["current_step"] = d["step_key"]
        row["current_step_status"] = _WAITING
        row["progress_done"] = row["progress_total"] = None
    elif kind is MessageReceived and d["step_key"] != row["current_step"]:
        row["steps_started"] += 1  # taken at once, without waiting: started and done
        row["steps_done"] += 1
    elif kind is TimerFired or kind is MessageReceived or kind is ChildFinished:
        row["steps_done"] += 1
        if d["step_key"] == row["current_step"]:
            _leave_step(row)
    elif kind is RunStarted:
        row["workflow"] = d["workflow"]
        row["workflow_version"] = d["workflow_version"]
        row["started_at"] = ts
    elif kind is RunPreempted:
        row["preemptions"] += 1
        row["interruptions"] += 1
    elif kind is StepReused or kind is ValuePublished:  # done at once, no attempt ran
        row["steps_started"] += 1
        row["steps_done"] += 1
    elif kind is RunParked:  # audit: why it waits, where the views show errors
        row["last_error_type"] = "NonDeterminismError"
        row["last_error_message"] = d["reason"]
        row["last_error_step"] = d["actual"]
    elif kind is RunFailed:
        row["last_error_type"] = d["error_type"]
        row["last_error_message"] = d["message"]
        row["last_error_step"] = d["step_key"]
    elif kind is RunCancelled:  # control: why it was stopped, where the views show errors
        row["last_error_type"] = RunCancelled.__name__
        row["last_error_message"] = f"by {d['by']}: {d['reason']}"
        row["last_error_step"] = row["current_step"]
    elif kind is RunTimedOut:
        row["last_error_type"] = RunTimedOut.__name__
        row["last_error_message"] = f"deadline {_text(d['deadline'])} passed"
        row["last_error_step"] = d.get("step_key")
    if status in TERMINAL_TEXT:
        row["finished_at"] = ts
        _leave_step(row)


def _text(value: Any) -> str:
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def _leave_step(row: dict[str, Any]) -> None:
    row["current_step"] = row["current_step_status"] = None
    row["progress_done"] = row["progress_total"] = None
