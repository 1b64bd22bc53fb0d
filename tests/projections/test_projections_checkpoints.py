"""The views over runs whose checkpoints a resume did not trust: the hotspots count them, and
every view still equals the oracle's fold of the log."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from view_oracle import actual_views, expected_views

import checkpointwf
from engine import Engine, RunStatus
from projections import Projector
from support import ledger_path


@pytest.fixture
def ledger_db(store_url: str, tmp_path: Path) -> Iterator[str]:
    try:
        yield ledger_path(store_url, tmp_path)
    finally:
        checkpointwf.close_ledgers()


def _invalidating(engine: Engine, tmp_path: Path, ledger_db: str) -> tuple[Any, dict[str, Any]]:
    """A run preempted mid-step whose input file then changes: its resume will not trust the
    checkpoint (the step restarts). Returns the workflow and the input to drive it with."""
    path = tmp_path / "input.txt"
    path.write_text("".join(f"{v}\n" for v in range(40)))
    given = {"path": str(path), "db": ledger_db, "chunk": 5, "unit_ms": 0}
    wf = checkpointwf.make()
    checkpointwf.HOOK.update(engine=engine, preempt_at=2, seen=0)
    try:
        assert engine.run(wf, given, key=checkpointwf.KEY).status is RunStatus.PREEMPTED
    finally:
        checkpointwf.HOOK.update(engine=None, preempt_at=None, seen=0)
        engine.token.clear()
    path.write_text("7\n" * 40)
    return wf, given


def test_the_views_count_invalidated_checkpoints(
    engine: Engine, tmp_path: Path, ledger_db: str
) -> None:
    wf, given = _invalidating(engine, tmp_path, ledger_db)
    run_id = engine.run(wf, given, key=checkpointwf.KEY).run_id
    with Projector(engine.store) as projector:
        projector.catch_up()
        views = actual_views(projector)
        assert views == expected_views(engine.store, [run_id])
        assert views["hotspots"][("cp-sum", "sum_file")][-1] == 1  # invalidated


def test_forgetting_a_run_takes_its_invalidated_checkpoints_out_of_the_hotspots(
    engine: Engine, tmp_path: Path, ledger_db: str
) -> None:
    """A pruned run's share of every count goes with it: the invalidations too."""
    from projections.retention import forget_runs

    wf, given = _invalidating(engine, tmp_path, ledger_db)
    pruned = engine.run(wf, given, key=checkpointwf.KEY).run_id
    kept = engine.run(wf, given, key="another").run_id  # nothing to invalidate
    with Projector(engine.store) as projector:
        projector.catch_up()
        assert actual_views(projector)["hotspots"][("cp-sum", "sum_file")][-1] == 1
        with projector.db.transaction([v.lock_name for v in projector.views]) as tx:
            forget_runs(tx, projector.views, [pruned])
        views = actual_views(projector)
        assert views == expected_views(engine.store, [kept])
        assert views["hotspots"][("cp-sum", "sum_file")][-1] == 0
