"""Starting runs in batches: `Engine.start_many`, and concurrent starts sharing index commits.

A batch of starts is one commit of the log and one of the runnable index; the runs it records
are the runs `start` would record, keys and their conflicts included.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence
from typing import Any

import pytest

from engine import Engine, IdempotencyConflictError, RunStatus, step, workflow
from engine.batching import Batcher
from engine.workers.leases import READY
from support import wait_until


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


def test_concurrent_submits_share_a_flush_and_its_outcome() -> None:
    """While one flush is in flight, later submits queue and go together in the next one."""
    flushed: list[list[int]] = []
    inside = threading.Event()
    release = threading.Event()

    def flush(values: Sequence[int]) -> None:
        if not flushed:
            inside.set()
            release.wait(30)
        flushed.append(list(values))

    batcher: Batcher[int] = Batcher(flush)
    threads = [threading.Thread(target=batcher.submit, args=(0,))]
    threads[0].start()
    assert inside.wait(30)
    threads += [threading.Thread(target=batcher.submit, args=(i,)) for i in range(1, 6)]
    for t in threads[1:]:
        t.start()
    wait_until(lambda: len(batcher._pending) == 5, "five submits queued behind the flush")
    release.set()
    for t in threads:
        t.join(30)
    assert flushed[0] == [0]
    assert sorted(flushed[1]) == [1, 2, 3, 4, 5]
    assert batcher.flushes == 2


def test_a_failed_flush_fails_every_submit_in_it() -> None:
    def flush(values: Sequence[uuid.UUID]) -> None:
        raise OSError("disk full")

    batcher: Batcher[uuid.UUID] = Batcher(flush)
    with pytest.raises(OSError, match="disk full"):
        batcher.submit(uuid.uuid4())
    with pytest.raises(OSError, match="disk full"):  # and the next caller is not stuck
        batcher.submit(uuid.uuid4())
