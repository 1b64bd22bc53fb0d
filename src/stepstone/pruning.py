"""Pruning, composed: the engine removes runs, the views forget them, in the same transactions.

The order is what keeps the audit promise:

1. the views catch up, so each has applied every event of the runs to prune (only runs whose
   last event is behind every view's position are chosen);
2. with an archive, the chosen runs are written to `FILE.partial`, the archive is read back
   and verified on its own (every chain whole, every run ending at the version it was chosen
   at), and only then renamed to FILE; a failure deletes nothing;
3. runs are deleted batch by batch, each batch one transaction holding every view's lock,
   in which the views forget the runs and the log, snapshots and runnable index lose them.

A rebuild in progress (its shadow tables present) stops the prune before its next batch: the
shadow may already hold the runs and would bring them back when swapped in.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from uuid import UUID

from engine import Engine
from engine.audit.archive import ArchiveError, ArchiveWriter, open_archive, verify_archive
from engine.audit.retention import Candidate, Executor, Policy, batches, candidates, remove
from engine.errors import EngineError
from projections import Projector
from projections.retention import forget_runs, rebuild_in_progress
from projections.sql import Tx


class RebuildInProgressError(EngineError):
    """A view is being rebuilt: pruning now could leave pruned runs in the rebuilt view."""

    def __init__(self, views: list[str]) -> None:
        super().__init__(
            f"a rebuild of the view(s) {', '.join(views)} is in progress (or died: run "
            "`stepstone projections rebuild` to finish it); prune once it is done")


@dataclass
class PruneReport:
    chosen: list[Candidate] = field(default_factory=list)
    removed_runs: int = 0
    removed_events: int = 0
    kept: list[UUID] = field(default_factory=list)
    archive_events: int = 0
    archive_bytes: int = 0


def prune(engine: Engine, policy: Policy, *, archive: Path | None = None,
          dry_run: bool = False, max_runs: int = 100, max_events: int = 20_000,
          progress: Callable[[int], None] | None = None) -> PruneReport:
    """Remove the runs `policy` chooses (see the module's note for the order of things)."""
    store = engine.store
    report = PruneReport()
    with Projector(store) as projector:
        projector.catch_up()
        views = projector.views
        locks = [v.lock_name for v in views]
        with projector.db.transaction(locks) as tx:
            busy = rebuild_in_progress(tx, views)
        if busy:
            raise RebuildInProgressError(busy)
        floor = min(projector.positions().values())
        report.chosen = [c for c in candidates(store, policy) if c.last_position <= floor]
        if dry_run or not report.chosen:
            return report
        if archive is not None:
            write_archive(engine, archive, report)
        engine.leases  # noqa: B018 (the runnable index's table exists, so its rows can go)

        def forget(tx: Executor, run_ids: list[UUID]) -> None:
            assert isinstance(tx, Tx)
            forget_runs(tx, views, run_ids)

        for batch in batches(report.chosen, max_runs=max_runs, max_events=max_events):
            with projector.db.transaction(locks) as tx:
                busy = rebuild_in_progress(tx, views)
                if busy:
                    raise RebuildInProgressError(busy)
                removed = remove(store, tx, batch, forget=forget)
            report.removed_runs += len(removed)
            report.removed_events += sum(c.version for c in removed)
            gone = {c.run_id for c in removed}
            report.kept.extend(c.run_id for c in batch if c.run_id not in gone)
            if progress is not None:
                progress(len(batch))
    return report


def write_archive(engine: Engine, path: Path, report: PruneReport) -> None:
    """Archive the chosen runs to `path` and verify it before anything is deleted."""
    partial = path.with_name(path.name + ".partial")
    with open_archive(partial, "wb", named=path) as out:
        writer = ArchiveWriter(engine.store, out)
        for c in report.chosen:
            writer.write_run(c.run_id)
    checked = verify_archive(partial)
    if not checked.ok:
        raise ArchiveError(f"the archive {partial} does not verify ({checked.problems[0]}); "
                           "nothing was deleted")
    for c in report.chosen:
        head = checked.runs.get(c.run_id)
        if head is None or head.version != c.version:
            raise ArchiveError(f"the archive {partial} does not hold run {c.run_id} whole; "
                               "nothing was deleted")
    os.replace(partial, path)
    report.archive_events = checked.events
    report.archive_bytes = path.stat().st_size
