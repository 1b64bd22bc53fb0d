"""Starting runs: one commit each (the first event and the index row together), and
`Engine.start_many`, one commit for a batch, recording the runs `start` would, keys included.
"""

from __future__ import annotations

from typing import Any

import pytest

from engine import Engine, IdempotencyConflictError, RunStatus, StoreWriteError, step, workflow
from engine.workers.leases import READY


@step
def double(x: int) -> int:
    return 2 * x


@workflow("start-many-doubling")
def doubling(x: int) -> int:
    return double(x)


def _count_inserts(engine: Engine) -> list[int]:
    calls = [0]
    recorder: Any = engine.store.recorder
    real = recorder.insert_events

    def counted(stored: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return real(stored, **kwargs)

    recorder.insert_events = counted
    return calls


def test_start_many_records_every_run_in_one_commit_and_each_runs(engine: Engine) -> None:
    inserts = _count_inserts(engine)
    ids = engine.start_many(doubling, [{"x": i} for i in range(25)])
    assert inserts[0] == 1
    assert len(set(ids)) == 25
    for i, run_id in enumerate(ids):
        run = engine.store.load(run_id)
        assert run.state.input == {"x": i}  # ids come back in input order
        row = engine.leases.row(run_id)
        assert row is not None
        assert (row.state, row.lease_owner) == (READY, None)
    results = [engine.resume(run_id) for run_id in ids]
    assert [(r.status, r.output) for r in results] == [
        (RunStatus.COMPLETED, 2 * i) for i in range(25)
    ]


def test_start_many_with_keys_returns_existing_runs_as_start_does(engine: Engine) -> None:
    first = engine.start(doubling, {"x": 1}, key="k1")
    ids = engine.start_many(doubling, [{"x": 0}, {"x": 1}, {"x": 2}], keys=["k0", "k1", None])
    assert ids[1] == first
    assert engine.start(doubling, {"x": 0}, key="k0") == ids[0]
    assert len(set(ids)) == 3
    with pytest.raises(IdempotencyConflictError):
        engine.start_many(doubling, [{"x": 5}], keys=["k1"])


def test_start_many_refuses_keys_that_do_not_pair_with_inputs(engine: Engine) -> None:
    with pytest.raises(ValueError, match="1 keys for 2 inputs"):
        engine.start_many(doubling, [{"x": 0}, {"x": 1}], keys=["only-one"])
    assert list(engine.store.started()) == []  # nothing written


def test_a_start_is_one_commit_with_its_index_row(engine: Engine) -> None:
    engine.leases  # noqa: B018 - the index exists before the counting starts
    inserts = _count_inserts(engine)
    index_transactions = [0]
    real_call = engine.leases._call

    def counted_call(fn: Any, **kwargs: Any) -> Any:
        index_transactions[0] += 1
        return real_call(fn, **kwargs)

    engine.leases._call = counted_call  # type: ignore[method-assign]
    run_id = engine.start(doubling, {"x": 3})
    assert (inserts[0], index_transactions[0]) == (1, 0)
    row = engine.leases.row(run_id)
    assert row is not None
    assert row.state == READY


def test_a_start_whose_index_row_fails_records_nothing(engine: Engine) -> None:
    """The row and the first event are one transaction: neither lands without the other."""
    real = engine.leases.enqueue_statements

    def broken(rows: Any) -> Any:
        return [*real(rows), ("INSERT INTO no_such_table (x) VALUES (%(x)s)", [{"x": 1}])]

    engine.leases.enqueue_statements = broken  # type: ignore[method-assign]
    with pytest.raises(StoreWriteError):
        engine.start(doubling, {"x": 4})
    assert list(engine.store.started()) == []
    assert engine.leases.counts() == {}
