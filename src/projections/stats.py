"""The workflow statistics view: per workflow, its runs by status and duration percentiles.

Counts move with each batch (a run changing status moves one count). The duration of a run is
wall time from `RunStarted` to `RunCompleted` (time spent preempted included); p50 and p95 are
over completed runs, interpolated linearly between ranks like PostgreSQL's `percentile_cont`.

Percentiles are not maintained per event: a batch only counts the runs that entered (or left)
the completed set since the percentiles were last ranked (`durations_pending`), and when the
projector has caught up with the log (`finish`), each such workflow's percentiles are read
off an index on (workflow, duration) with two `LIMIT 2 OFFSET k` queries. A rebuild thus
ranks each workflow once, not once per batch, and memory does not grow with the number of
runs. The pending count is a column, not process state, so a projector killed mid catch-up
still ranks those workflows on its next pass.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from engine import events as ev
from engine.status import RECORDED, RunStatus
from projections.facts import Fact
from projections.sql import Rows, Table, Tx
from projections.view import STATUS_TEXT_AFTER, View, seconds_between, touched_runs

# One count column per status of the engine, in its order (a new status is a new column: the
# view's schema check then asks for a rebuild).
STATUSES = tuple(status.value for status in RECORDED)
_COMPLETED = RunStatus.COMPLETED.value
STATS = Table(
    name="workflow_stats",
    columns=(
        ("workflow", "text"),
        ("runs", "int"),
        *((status, "int") for status in STATUSES),
        ("duration_p50_s", "float"),
        ("duration_p95_s", "float"),
        ("durations_pending", "int"),
    ),
    key=("workflow",),
)
STATS_RUNS = Table(
    name="workflow_stats_runs",
    columns=(
        ("run_id", "uuid"),
        ("workflow", "text"),
        ("status", "text"),
        ("started_at", "ts"),
        ("duration_s", "float"),
    ),
    key=("run_id",),
    indexes=(("workflow", "duration_s"),),
)
_COUNTED = ("workflow", "runs", *STATUSES, "durations_pending")
_SLOT = {status: i + 1 for i, status in enumerate(STATUSES)}


class WorkflowStatsView(View):
    name = "workflow_stats"
    tables = (STATS, STATS_RUNS)
    defers_work = True
    handles = frozenset(STATUS_TEXT_AFTER)
    ignores = frozenset({  # runs by status: only the events that move a status count
        ev.StepCheckpointed, ev.StepCompleted, ev.StepFailed, ev.StepPreempted, ev.PatchMarked,
        ev.StepReused, ev.CheckpointValidated, ev.ValuePublished,
    })

    def load(self, tx: Tx, facts: Sequence[Fact]) -> Rows:
        facts = [f for f in facts if f.kind in STATUS_TEXT_AFTER]
        return tx.select(self.bound[1], STATS_RUNS.column_names, touched_runs(facts))

    def apply(self, tx: Tx, facts: Sequence[Fact], loaded: list[list[Any]]) -> None:
        counts, runs_table = self.bound
        facts = [f for f in facts if f.kind in STATUS_TEXT_AFTER]
        runs: dict[Any, list[Any]] = {row[0]: row for row in loaded}
        # workflow -> [runs, *one count per status, durations pending]
        deltas: defaultdict[str, list[int]] = defaultdict(lambda: [0] * (len(STATUSES) + 2))
        changed = set()
        for fact in facts:
            status = STATUS_TEXT_AFTER[fact.kind]
            if fact.kind is ev.RunStarted:
                workflow = fact.data["workflow"]
                runs[fact.run_id] = [fact.run_id, workflow, status, fact.data["timestamp"], None]
                deltas[workflow][0] += 1
                deltas[workflow][_SLOT[status]] += 1
                changed.add(fact.run_id)
                continue
            run = runs.get(fact.run_id)
            if run is None or run[2] == status:
                continue
            delta = deltas[run[1]]
            delta[_SLOT[run[2]]] -= 1
            delta[_SLOT[status]] += 1
            if _COMPLETED in (status, run[2]):  # the ranked set changes
                completed = status == _COMPLETED
                run[4] = seconds_between(run[3], fact.data["timestamp"]) if completed else None
                delta[-1] += 1
            run[2] = status
            changed.add(fact.run_id)
        tx.upsert(runs_table, [tuple(runs[r]) for r in changed])
        tx.upsert(counts, [(w, *d) for w, d in deltas.items()], _COUNTED, add=True)

    def finish(self, tx: Tx) -> None:
        counts, runs_table = self.bound
        pending = tx.fetch(
            f"SELECT workflow, completed FROM {counts.qname} WHERE durations_pending <> 0"
        )
        for workflow, completed in pending:
            p50, p95 = (_percentile(tx, runs_table.qname, workflow, completed, p)
                        for p in (0.5, 0.95))
            tx.execute(
                f"UPDATE {counts.qname} SET duration_p50_s = ?, duration_p95_s = ?, "
                "durations_pending = 0 WHERE workflow = ?",
                (p50, p95, workflow),
            )


def _percentile(tx: Tx, table: str, workflow: str, n: int, p: float) -> float | None:
    if n <= 0:
        return None
    rank = (n - 1) * p
    low = math.floor(rank)
    values = [
        row[0]
        for row in tx.fetch(
            f"SELECT duration_s FROM {table} WHERE workflow = ? AND duration_s IS NOT NULL "
            "ORDER BY duration_s LIMIT 2 OFFSET ?",
            (workflow, low),
        )
    ]
    if not values:
        return None
    if len(values) == 1 or rank == low:
        return float(values[0])
    return float(values[0] + (rank - low) * (values[1] - values[0]))
