"""kill -9 of a pruner at random points: every run is left whole or gone, never half, the
views agree with the log, and running it again finishes the job."""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

from projection_histories import open_store, random_runs, view_rows

from engine.audit.verify import verify
from engine.store import RunStore
from projections import Projector
from support import wait_until

CUTOFF = "2026-06-01"


def prune_args(url: str, archive: Path) -> list[str]:
    return [sys.executable, "-m", "stepstone", "prune", "--finished-before", CUTOFF,
            "--batch-runs", "1", "--archive", str(archive), "--db", url]


def present(store: RunStore) -> set[Any]:
    return {s.originator_id for s in store.started()}


def test_kill_9_leaves_runs_whole_or_gone(store_url: str, procs: Any, tmp_path: Path) -> None:
    store = open_store(store_url)
    sims = random_runs(store, 200, 12, seed=21)
    versions = {s.run.id: s.run.version for s in sims}
    finished = {s.run.id for s in sims if s.run.status.is_terminal}
    rng = random.Random(21)
    with Projector(store) as projector:
        projector.catch_up()  # the pruner's own catch-up then has nothing to do
    landings = 0
    for attempt in range(3):
        before = len(present(store))
        goal = before - rng.randint(1, 6)
        proc = procs.spawn(prune_args(store_url, tmp_path / f"a{attempt}.jsonl.gz"))
        wait_until(lambda goal=goal: len(present(store)) <= goal
                   or len(present(store) & finished) <= 1, "the pruner to remove some runs")
        landed = procs.sigkill(proc)  # wherever it is now (or, rarely, just after it finished)
        landings += landed
        for rid, version in versions.items():  # whole (its chain intact) or gone
            last = store.reader.last_event(rid)
            assert last is None or last.version == version, rid
        assert verify(store, snapshots="none").ok
        with Projector(store) as projector:
            projector.catch_up()
            kept_up = view_rows(projector)
            projector.rebuild()
            assert view_rows(projector) == kept_up
    assert landings, "no kill landed while the pruner ran"
    final = procs.spawn(prune_args(store_url, tmp_path / "last.jsonl.gz"))
    assert procs.finish(final) == 0, procs.output(final)
    left = present(store) & finished
    assert len(left) <= 1  # SQLite keeps the run holding the log's newest position
    assert present(store) >= set(versions) - finished  # nothing unfinished touched
    store.close()
