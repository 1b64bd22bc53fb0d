"""What every view should hold, folded from the log by the test itself (not by the projector).

`expected_views` reads each run's events from the store with their positions and computes
every column of every view table, private ones included, from definitions stated here:

- a crash is a start of a step whose previous attempt has no recorded end;
- the current step is the last one started, until it completes or the run ends;
- progress is the last checkpoint with a total of the current step;
- durations are the time between two events, or what the ending event says.

Values are compared after `canonical`, which makes SQLite text and PostgreSQL types equal.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import orjson

from engine import events as ev
from engine.store import RunStore
from projections import Projector

_STATUS = {
    ev.RunStarted: "pending", ev.RunResumed: "running", ev.StepStarted: "running",
    ev.RunPreempted: "preempted", ev.RunCompleted: "completed", ev.RunFailed: "failed",
    ev.RunCancelled: "cancelled", ev.RunTimedOut: "timed_out",
}
_QUIET = (ev.StepCheckpointed, ev.StepCompleted, ev.StepFailed, ev.StepPreempted,
          ev.CheckpointValidated)
STATUSES = ("pending", "running", "preempted", "waiting", "completed", "failed", "cancelled",
            "timed_out", "parked")


def canonical(kind: str, value: Any) -> Any:
    if value is None:
        return None
    if kind == "uuid":
        return str(value)
    if kind == "ts":
        t = datetime.fromisoformat(value) if isinstance(value, str) else value
        return t.astimezone(UTC)
    if kind == "float":
        return round(float(value), 6)
    return value


def actual_views(projector: Projector) -> dict[str, dict[tuple[Any, ...], tuple[Any, ...]]]:
    """Every view table's rows, canonical, by table (spec name) and key."""
    out: dict[str, dict[tuple[Any, ...], tuple[Any, ...]]] = {}
    with projector.db.transaction() as tx:
        for view in projector.views:
            for table in view.bound:
                spec = table.spec
                kinds = [k for _, k in spec.columns]
                names = spec.column_names
                rows: dict[tuple[Any, ...], tuple[Any, ...]] = {}
                for raw in tx.fetch(f"SELECT * FROM {table.qname}"):
                    row = tuple(canonical(k, v) for k, v in zip(kinds, raw, strict=True))
                    if spec.name == "hotspots_runs":  # JSON text: compare what it means
                        row = (*row[:2], orjson.loads(row[2]), orjson.loads(row[3] or "{}"))
                    if spec.name == "published":
                        row = (*row[:2], orjson.loads(row[2]), *row[3:])
                    rows[tuple(row[names.index(c)] for c in spec.key)] = row
                out[spec.name] = rows
    return out


def expected_views(
    store: RunStore, run_ids: Iterable[UUID]
) -> dict[str, dict[tuple[Any, ...], tuple[Any, ...]]]:
    runs, attempts, hot, hot_runs, stats_runs = {}, {}, {}, {}, {}
    published: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    for run_id in run_ids:
        history = store.events_with_positions(run_id)
        for position, e in history:  # the latest value of each key
            if isinstance(e, ev.ValuePublished):
                published[(str(run_id), e.key)] = (str(run_id), e.key, e.value, e.step_key,
                                                   e.timestamp.astimezone(UTC), position)
        run, tried, opened = _fold_run(history)
        runs[(str(run_id),)] = tuple(run.values())
        workflow = run["workflow"]
        invalid_by_step: dict[str, int] = {}
        for (key, attempt), a in tried.items():
            invalidated = a.pop("invalidated")  # a hotspots count, not an attempts column
            if invalidated:
                name = a["step_name"]
                invalid_by_step[name] = invalid_by_step.get(name, 0) + invalidated
            attempts[(str(run_id), key, attempt)] = (str(run_id), key, attempt, *a.values())
            h = hot.setdefault((workflow, a["step_name"]), [0, 0, 0, 0, 0, 0])
            h[0] += 1
            h[1] += attempt > 1
            h[2] += a["outcome"] == "failed"
            h[3] += a["outcome"] == "preempted"
            h[4] += a["outcome"] == "crashed"
            h[5] += invalidated
        hot_runs[(str(run_id),)] = (str(run_id), workflow, opened, invalid_by_step)
        duration = None
        if run["status"] == "completed":
            duration = round((run["finished_at"] - run["started_at"]).total_seconds(), 6)
        stats_runs[(str(run_id),)] = (str(run_id), workflow, run["status"], run["started_at"],
                                      duration)
    stats: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    for workflow in sorted({r[1] for r in stats_runs.values()}):
        mine = [r for r in stats_runs.values() if r[1] == workflow]
        done = sorted(r[4] for r in mine if r[2] == "completed")
        stats[(workflow,)] = (workflow, len(mine), *(sum(r[2] == s for r in mine)
                                                     for s in STATUSES),
                              _percentile(done, 0.5), _percentile(done, 0.95), 0)
    return {
        "runs": runs,
        "step_attempts": attempts,
        "hotspots": {k: (*k, *v) for k, v in hot.items()},
        "hotspots_runs": hot_runs,
        "workflow_stats": stats,
        "workflow_stats_runs": stats_runs,
        "published": published,
    }


def _fold_run(
    history: list[tuple[int, ev.RunEvent]],
) -> tuple[dict[str, Any], dict[tuple[str, int], dict[str, Any]], dict[str, str]]:
    first = history[0][1]
    assert isinstance(first, ev.RunStarted)
    run: dict[str, Any] = {
        "run_id": str(first.originator_id), "workflow": first.workflow,
        "workflow_version": first.workflow_version, "status": "pending",
        "current_step": None, "current_step_status": None, "steps_done": 0,
        "steps_started": 0, "progress_done": None, "progress_total": None, "attempts": 0,
        "retries": 0, "preemptions": 0, "crashes": 0, "interruptions": 0, "worker": None,
        "started_at": first.timestamp.astimezone(UTC), "updated_at": None, "finished_at": None,
        "last_error_type": None, "last_error_message": None, "last_error_step": None,
        "last_position": None,
    }
    tried: dict[tuple[str, int], dict[str, Any]] = {}
    open_attempt: dict[str, int] = {}  # step key -> its attempt without a recorded end
    names: dict[str, str] = {}
    progress: dict[str, tuple[int | None, int]] = {}
    started_keys: set[str] = set()
    for position, e in history:
        ts = e.timestamp.astimezone(UTC)
        if isinstance(e, ev.StepStarted):
            if e.step_key in open_attempt:
                tried[(e.step_key, open_attempt[e.step_key])]["outcome"] = "crashed"
            open_attempt[e.step_key] = e.attempt
            names[e.step_key] = e.step_name
            started_keys.add(e.step_key)
            tried[(e.step_key, e.attempt)] = {
                "step_name": e.step_name, "worker": e.worker_id, "started_at": ts,
                "ended_at": None, "outcome": "running", "duration_s": None,
                "error_type": None, "error_message": None, "invalidated": 0,
            }
            run["current_step"], run["current_step_status"] = e.step_key, "running"
        elif isinstance(e, ev.StepCheckpointed):
            if e.progress_total is not None:
                progress[e.step_key] = (e.progress_done, e.progress_total)
        elif isinstance(e, ev.CheckpointValidated):
            tried[(e.step_key, e.attempt)]["invalidated"] += e.outcome.invalidated
        elif isinstance(e, (ev.StepCompleted, ev.StepFailed, ev.StepPreempted)):
            open_attempt.pop(e.step_key, None)
            a = tried[(e.step_key, e.attempt)]
            a["ended_at"] = ts
            a["outcome"] = {ev.StepCompleted: "completed", ev.StepFailed: "failed",
                            ev.StepPreempted: "preempted"}[type(e)]
            said = e.duration_s if not isinstance(e, ev.StepPreempted) else None
            a["duration_s"] = round(said if said is not None
                                    else (ts - a["started_at"]).total_seconds(), 6)
            if isinstance(e, ev.StepFailed):
                a["error_type"], a["error_message"] = e.error_type, e.message
            if e.step_key == run["current_step"]:
                run["current_step_status"] = a["outcome"]
                if isinstance(e, ev.StepCompleted):
                    run["current_step"] = run["current_step_status"] = None
        elif not isinstance(e, tuple(_STATUS)):
            raise AssertionError(f"the oracle does not know {type(e).__name__}")
        if isinstance(e, (ev.StepFailed, ev.RunFailed)):
            run["last_error_type"], run["last_error_message"] = e.error_type, e.message
            run["last_error_step"] = e.step_key
        if isinstance(e, ev.RunCancelled):  # why it was stopped, where errors are shown
            run["last_error_type"] = "RunCancelled"
            run["last_error_message"] = f"by {e.by}: {e.reason}"
            run["last_error_step"] = run["current_step"]
        if isinstance(e, ev.RunTimedOut):
            run["last_error_type"] = "RunTimedOut"
            run["last_error_message"] = f"deadline {e.deadline.isoformat()} passed"
            run["last_error_step"] = e.step_key
        if not isinstance(e, _QUIET):
            run["status"] = _STATUS[type(e)]
        if run["status"] in ("completed", "failed", "cancelled", "timed_out"):
            run["finished_at"] = run["finished_at"] or ts
            run["current_step"] = run["current_step_status"] = None
        run["updated_at"], run["worker"], run["last_position"] = ts, e.worker_id, position
    starts = list(tried.values())
    run["steps_started"] = len(started_keys)
    run["steps_done"] = sum(a["outcome"] == "completed" for a in starts)
    run["attempts"] = len(starts)
    run["retries"] = sum(attempt > 1 for _, attempt in tried)
    run["crashes"] = sum(a["outcome"] == "crashed" for a in starts)
    run["preemptions"] = sum(isinstance(e, ev.RunPreempted) for _, e in history)
    run["interruptions"] = run["crashes"] + run["preemptions"]
    if run["current_step"] is not None:
        run["progress_done"], run["progress_total"] = progress.get(run["current_step"],
                                                                   (None, None))
    opened = {key: names[key] for key in open_attempt}
    return run, tried, opened


def _percentile(values: list[float], p: float) -> float | None:
    """Linear interpolation between closest ranks (PostgreSQL's percentile_cont)."""
    if not values:
        return None
    rank = (len(values) - 1) * p
    low, high = math.floor(rank), math.ceil(rank)
    return round(values[low] + (values[high] - values[low]) * (rank - low), 6)
