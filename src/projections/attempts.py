"""The step attempts view: one row per attempt of a step, with how and when it ended.

Outcomes: `running` (no end recorded yet), `completed`, `failed`, `preempted`, and `crashed`: a
later attempt of the same step started while this one had no recorded end, so its worker died.
A crashed attempt keeps no end time: the log does not know when the worker died.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from engine import events as ev
from engine.events import StepCompleted, StepFailed, StepPreempted, StepStarted
from projections.facts import Fact
from projections.sql import Rows, Table, Tx
from projections.view import Events, View, seconds_between, touched_runs

ATTEMPTS = Table(
    name="step_attempts",
    columns=(
        ("run_id", "uuid"),
        ("step_key", "text"),
        ("attempt", "int"),
        ("step_name", "text"),
        ("worker", "text"),
        ("started_at", "ts"),
        ("ended_at", "ts"),
        ("outcome", "text"),
        ("duration_s", "float"),
        ("error_type", "text"),
        ("error_message", "text"),
    ),
    key=("run_id", "step_key", "attempt"),
)
# Rows are lists in column order (a rebuild makes one per attempt: dicts cost too much here).
_STARTED, _ENDED, _OUTCOME, _DURATION, _ERROR_TYPE, _ERROR_MESSAGE = range(5, 11)
_STEP_KINDS: Events = frozenset({StepStarted, StepCompleted, StepFailed, StepPreempted})
_ENDS = {StepCompleted: "completed", StepFailed: "failed", StepPreempted: "preempted"}


class StepAttemptsView(View):
    name = "step_attempts"
    tables = (ATTEMPTS,)
    handles = _STEP_KINDS
    ignores = frozenset({  # a step's attempts are all it shows (a reused step ran none)
        ev.RunStarted, ev.RunResumed, ev.StepCheckpointed, ev.TimerStarted, ev.TimerFired,
        ev.MessageAwaited, ev.MessageReceived, ev.ValuePublished, ev.ChildStarted, ev.ChildFinished,
        ev.RunPreempted, ev.RunCompleted, ev.RunFailed, ev.RunCancelled, ev.RunTimedOut,
        ev.PatchMarked, ev.StepReused, ev.RunParked, ev.CheckpointValidated,
    })

    def load(self, tx: Tx, facts: Sequence[Fact]) -> Rows:
        # Only attempts without an end can change: those of earlier batches are loaded.
        steps = [f for f in facts if f.kind in _STEP_KINDS]
        return tx.select(self.bound[0], ATTEMPTS.column_names, touched_runs(steps),
                         "outcome = 'running'")

    def apply(self, tx: Tx, facts: Sequence[Fact], loaded: list[list[Any]]) -> None:
        steps = [f for f in facts if f.kind in _STEP_KINDS]
        rows: dict[tuple[str, str, int], list[Any]] = {(r[0], r[1], r[2]): r for r in loaded}
        open_ = {(k[0], k[1]): row for k, row in rows.items()}
        for run_id, kind, d in ((f.run_id, f.kind, f.data) for f in steps):
            key = d["step_key"]
            if kind is StepStarted:
                previous = open_.get((run_id, key))
                if previous is not None:
                    previous[_OUTCOME] = "crashed"
                row = [run_id, key, d["attempt"], d["step_name"], d["worker_id"],
                       d["timestamp"], None, "running", None, None, None]
                rows[(run_id, key, d["attempt"])] = open_[(run_id, key)] = row
                continue
            found = rows.get((run_id, key, d["attempt"]))
            if found is None:  # an end without its start: keep what the log says
                found = [run_id, key, d["attempt"], None, None, None, None, None, None, None, None]
                rows[(run_id, key, d["attempt"])] = found
            open_.pop((run_id, key), None)
            found[_OUTCOME] = _ENDS[kind]
            found[_ENDED] = d["timestamp"]
            if "duration_s" in d:
                found[_DURATION] = d["duration_s"]
            else:
                found[_DURATION] = seconds_between(found[_STARTED], d["timestamp"])
            if kind is StepFailed:
                found[_ERROR_TYPE] = d["error_type"]
                found[_ERROR_MESSAGE] = d["message"]
        tx.upsert(self.bound[0], list(rows.values()))
