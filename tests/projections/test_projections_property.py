"""Property: views hold what the log says, incrementally and rebuilt, column for column.

Random histories of several runs (completions, failures, retries, crashes, preemptions,
checkpoints, cancellations) are saved in random-sized group commits, interleaved with
incremental catch-ups in random batch sizes. Every column of every view table, private ones
included, is then checked against an oracle folded from the log by the test
(`view_oracle.py`), before and after a rebuild; the runs view is also checked against the
engine's own replay of each run.
"""

from __future__ import annotations

import random
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from projection_histories import T0, RunSim, open_store, random_runs, scratch_store, view_rows
from view_oracle import actual_views, expected_views

from engine import RunInfo
from engine.store import RunStore
from projections import Projector

# (which run acts, which of its valid commands, a seed for the command's details) | an op
_ACTIONS = st.lists(
    st.one_of(
        st.tuples(st.just("act"), st.integers(0, 5), st.integers(0, 10**6)),
        st.tuples(st.just("save"), st.integers(1, 3), st.integers(0, 10**6)),
        st.tuples(st.just("catch_up"), st.integers(1, 7), st.integers(0, 10**6)),
    ),
    max_size=120,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])
@given(actions=_ACTIONS, n_runs=st.integers(1, 6), workflows=st.integers(1, 2))
def test_rebuilt_views_equal_incremental_views(
    store_url: str,
    tmp_path: Path,
    actions: list[tuple[str, int, int]],
    n_runs: int,
    workflows: int,
) -> None:
    kind = "sqlite" if store_url.startswith("sqlite") else "postgres"
    with scratch_store(kind, tmp_path, store_url.split("?")[0]) as url:
        store = open_store(url)
        projector = Projector(store, batch_size=3)
        try:
            sims = _play(store, projector, actions, n_runs, workflows)
            projector.batch_size = 4
            projector.catch_up()
            incremental = view_rows(projector)
            _check_against_oracle(projector, store, [s.run.id for s in sims])
            position = projector.rebuild()
            assert position == store.head()
            assert view_rows(projector) == incremental
            _check_against_replay(projector, store, sims)
        finally:
            projector.close()
            store.close()


def _play(
    store: RunStore,
    projector: Projector,
    actions: list[tuple[str, int, int]],
    n_runs: int,
    workflows: int,
) -> list[RunSim]:
    sims = [
        RunSim(uuid.UUID(int=i + 1), f"wf{i % workflows}", T0 + timedelta(seconds=i))
        for i in range(n_runs)
    ]
    dirty: list[RunSim] = list(sims)
    for op, arg, seed in actions:
        rng = random.Random(seed)
        if op == "act":
            sim = sims[arg % n_runs]
            options = sim.valid()
            if options:
                sim.do(options[seed % len(options)], rng)
                if sim not in dirty:
                    dirty.append(sim)
        elif op == "save" and dirty:
            # A group commit of some of the runs with pending events, as a worker would.
            chosen = dirty[: max(1, len(dirty) // arg)]
            store.save(*(s.run for s in chosen))
            dirty = [s for s in dirty if s not in chosen]
        elif op == "catch_up":
            projector.batch_size = arg
            projector.catch_up()
    if dirty:
        store.save(*(s.run for s in dirty))
    return sims


def _check_against_oracle(projector: Projector, store: RunStore, run_ids: list[uuid.UUID]) -> None:
    actual, expected = actual_views(projector), expected_views(store, run_ids)
    assert sorted(actual) == sorted(expected)
    for table, rows in expected.items():
        assert actual[table] == rows, table


def _check_against_replay(projector: Projector, store: RunStore, sims: list[RunSim]) -> None:
    rows = {str(r[0]): r for r in view_rows(projector)["stepstone_view_runs"]}
    assert len(rows) == len(sims)
    for sim in sims:
        info = RunInfo.of(store.load(sim.run.id))
        row = rows[str(sim.run.id)]
        status, steps_done, steps_started, attempts = row[3], row[6], row[7], row[10]
        assert (status, steps_done, steps_started, attempts) == (
            info.status.value, info.steps_completed, info.steps_recorded, info.attempts
        ), sim.run.id


@pytest.mark.parametrize("seed", range(3))
def test_bulk_histories_rebuild_equal_incremental(store_url: str, seed: int) -> None:
    """Bigger logs than hypothesis makes: many runs, long histories, batches of 50."""
    store = open_store(store_url)
    with Projector(store, batch_size=50) as projector:
        sims = random_runs(store, 40, 30, seed)
        projector.catch_up()
        sims += random_runs(store, 40, 30, seed + 100)
        projector.catch_up()
        incremental = view_rows(projector)
        _check_against_oracle(projector, store, [s.run.id for s in sims])
        projector.rebuild()
        assert view_rows(projector) == incremental
    store.close()
