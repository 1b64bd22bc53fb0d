"""Pruned runs leave the views too: their rows go, and what they added to totals is taken off.

The pruner (`engine.audit.retention.remove`) calls `forget_runs` inside the transaction that
deletes the runs' events, holding every view's lock, so the views never show a run the log no
longer has, and a rebuild after the prune equals the views kept up to date minus the pruned
runs. That holds because the runs are finished and each view has already applied their last
event (the pruner catches the views up first and only prunes runs behind every view's
position): nothing of theirs is still to come.

Per-run rows are deleted. Totals are reduced by what the run added, read from the rows being
deleted: the workflow statistics from the run's row in `workflow_stats_runs`; the hotspots from
the run's attempts in `step_attempts` (an attempt's outcome says what it counted: a crashed
one is the crash its successor's start counted). A total that falls to nothing is removed, as
a rebuild would never have made it. A view that keeps anything per run must say here how it
forgets it (`tests/projections/test_retention.py` checks that every view does).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any
from uuid import UUID

import orjson

from engine.status import RunStatus
from projections.attempts import StepAttemptsView
from projections.hotspots import HotspotsView
from projections.published import PublishedView
from projections.rebuild import columns
from projections.runs import RunsView
from projections.sql import Bound, Tx
from projections.stats import STATUSES, WorkflowStatsView
from projections.view import SHADOW, View

_COMPLETED = RunStatus.COMPLETED.value


def rebuild_in_progress(tx: Tx, views: Sequence[View]) -> list[str]:
    """The views with a rebuild's shadow tables present (running, or died: the next
    `projections rebuild` finishes it). Pruning then would let the shadow keep pruned runs."""
    return [v.name for v in views if columns(tx, f"{v.table}{SHADOW}")]


def forget_runs(tx: Tx, views: Sequence[View], run_ids: Sequence[UUID]) -> None:
    """Remove the runs from every view, inside `tx` (which holds the views' locks)."""
    ids = [str(r) for r in run_ids]
    by_kind = {type(v): v for v in views}
    attempts = by_kind.get(StepAttemptsView)
    for view in views:  # hotspots first: they are counted from the attempts about to go
        if isinstance(view, HotspotsView):
            _forget_hotspots(tx, view, attempts, ids)
    for view in views:
        FORGETTERS[type(view)](tx, view, ids)


def _where(tx: Tx, table: Bound, ids: Sequence[str]) -> tuple[str, list[Any]]:
    if tx.db.is_sqlite:
        return f"run_id IN ({', '.join('?' * len(ids))})", list(ids)
    return "run_id = ANY(?::uuid[])", [list(ids)]


def _delete(tx: Tx, table: Bound, ids: Sequence[str]) -> None:
    where, params = _where(tx, table, ids)
    tx.execute(f"DELETE FROM {table.qname} WHERE {where}", params)


def _rows_of(tx: Tx, table: Bound, cols: str, ids: Sequence[str]) -> list[Any]:
    where, params = _where(tx, table, ids)
    return tx.fetch(f"SELECT {cols} FROM {table.qname} WHERE {where}", params)


def _forget_rows(tx: Tx, view: View, ids: Sequence[str]) -> None:
    for table in view.bound:
        _delete(tx, table, ids)


def _forget_hotspots(tx: Tx, view: View, attempts: View | None, ids: Sequence[str]) -> None:
    counts, runs_table = view.bound
    if attempts is None:
        raise ValueError("the hotspots view forgets a run from its step attempts: prune with "
                         "both views")
    workflows: dict[Any, str] = {}
    deltas: defaultdict[tuple[str, str], list[int]] = defaultdict(lambda: [0] * 6)
    for run_id, workflow, invalidated in _rows_of(tx, runs_table,
                                                  "run_id, workflow, invalidated", ids):
        workflows[run_id] = workflow
        for name, n in orjson.loads(invalidated or "{}").items():
            deltas[(workflow, name)][5] -= n
    rows = _rows_of(tx, attempts.bound[0], "run_id, step_key, attempt, step_name, outcome", ids)
    for run_id, key, attempt, name, outcome in rows:
        workflow = workflows.get(run_id) or workflows.get(str(run_id)) or ""
        c = deltas[(workflow, name or key.rpartition("#")[0] or key)]
        if name is not None:  # made by its StepStarted: counted as an attempt there
            c[0] -= 1
            c[1] -= attempt > 1
        c[2] -= outcome == "failed"
        c[3] -= outcome == "preempted"
        c[4] -= outcome == "crashed"
    tx.upsert(counts, [(*k, *v) for k, v in deltas.items()], add=True)
    tx.execute(f"DELETE FROM {counts.qname} WHERE attempts = 0 AND retries = 0 AND "
               "failures = 0 AND preemptions = 0 AND crashes = 0 AND invalidated = 0")
    _delete(tx, runs_table, ids)


def _forget_stats(tx: Tx, view: View, ids: Sequence[str]) -> None:
    counts, runs_table = view.bound
    deltas: defaultdict[str, list[int]] = defaultdict(lambda: [0] * (len(STATUSES) + 2))
    for workflow, status in _rows_of(tx, runs_table, "workflow, status", ids):
        d = deltas[workflow]
        d[0] -= 1
        d[1 + STATUSES.index(status)] -= 1
        d[-1] += status == _COMPLETED  # the ranked set shrinks: rank the percentiles again
    _delete(tx, runs_table, ids)
    tx.upsert(counts, [(w, *d) for w, d in deltas.items()],
              ("workflow", "runs", *STATUSES, "durations_pending"), add=True)
    tx.execute(f"DELETE FROM {counts.qname} WHERE runs = 0")
    view.finish(tx)


def _nothing(tx: Tx, view: View, ids: Sequence[str]) -> None:
    """Hotspots forget before the attempts go (see `forget_runs`)."""


FORGETTERS: dict[type[View], Callable[[Tx, Any, Sequence[str]], None]] = {
    RunsView: _forget_rows,
    StepAttemptsView: _forget_rows,
    HotspotsView: _nothing,
    WorkflowStatsView: _forget_stats,
    PublishedView: _forget_rows,
}
"""How each view forgets a run; a view missing here cannot be pruned past (KeyError)."""
