"""A failed write never leaves a hole: fail the N-th save of a representative run, for every N.

The fault is injected at the store boundary, in the library's recorder (`insert_events`), on
both stores: before the commit (nothing written) and after it (written, but reported as
failed: the outcome a dropped connection leaves unknown), once and several times in a row.
Every time the log has no version gap, its hash chain verifies, the run completes with the
output of a clean run, and steps ran again only inside the documented window (a step whose
completion was not committed runs again).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from eventsourcing.persistence import OperationalError

import faultwf
from engine import (
    Engine,
    OutputEncodingError,
    RunStatus,
    Settings,
    StoreWriteError,
    step,
    step_context,
    workflow,
)
from engine.audit.verify import verify


class SaveFaults:
    """Counts the recorder's inserts and fails the ones numbered in `failing`."""

    def __init__(self, engine: Engine, failing: set[int], *, after_commit: bool) -> None:
        self.failing = failing
        self.after_commit = after_commit
        self.calls = 0
        self.injected = 0
        recorder: Any = engine.store.recorder
        self._insert: Callable[..., Any] = recorder.insert_events
        recorder.insert_events = self._insert_events

    def _insert_events(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls not in self.failing:
            return self._insert(*args, **kwargs)
        self.injected += 1
        if self.after_commit:
            self._insert(*args, **kwargs)
        raise OperationalError(f"injected fault on save {self.calls}")


@contextmanager
def faulty_engine(url: str, retry_s: float) -> Iterator[Engine]:
    settings = Settings(database_url=url, worker_id="faults", store_retry_s=retry_s)
    faultwf.reset()
    with Engine(settings) as engine:
        yield engine


def drive_to_end(engine: Engine, key: str) -> tuple[Any, int]:
    """Run until completed, rerunning after each store error; the output and the reruns."""
    reruns = 0
    while True:
        try:
            result = engine.run(faultwf.representative, {"n": 4}, key=key)
        except StoreWriteError:  # a save failed; a read never does here
            reruns += 1
            assert reruns < 10, "the run does not make progress after store faults"
            continue
        assert result.status is RunStatus.COMPLETED, result
        return result.output, reruns


def executions(run_id: Any) -> int:
    return sum(n for op, n in faultwf.EXECUTIONS.items() if op.startswith(str(run_id)))


def check_log(engine: Engine, run_id: Any) -> None:
    history = engine.history(run_id)
    versions = [e.version for e in history]
    assert versions == list(range(1, len(versions) + 1)), f"a hole in the log: {versions}"
    report = verify(engine.store, run_id)
    assert report.ok, report.problems
    assert not report.unchained
    failed = [e.fields for e in history if e.event_type == "StepFailed"]
    # The only failure a step records is the workflow's own (flaky's first attempt): a store
    # fault raised inside step code is never recorded as the user's step failure.
    assert all(f["error_type"] == "RuntimeError" for f in failed), failed
    assert len(failed) <= 1


@pytest.fixture(scope="module")
def clean() -> dict[str, Any]:
    return {}


def clean_run(store_url: str, clean: dict[str, Any]) -> tuple[Any, int, int]:
    """The output, save count and executions of an uninterrupted run (once per store)."""
    if store_url.split(":")[0] not in clean:
        with faulty_engine(store_url, 0.0) as engine:
            faults = SaveFaults(engine, set(), after_commit=False)
            output, reruns = drive_to_end(engine, "clean")
            assert reruns == 0
            run_id = engine.runs()[-1].run_id
            clean[store_url.split(":")[0]] = (output, faults.calls, executions(run_id))
    result: tuple[Any, int, int] = clean[store_url.split(":")[0]]
    return result


@pytest.mark.parametrize("after_commit", [False, True], ids=["before-commit", "after-commit"])
@pytest.mark.parametrize("burst", [1, 3], ids=["once", "3-in-a-row"])
def test_failing_the_nth_save_never_leaves_a_hole(
    store_url: str, clean: dict[str, Any], after_commit: bool, burst: int
) -> None:
    expected, saves, clean_executions = clean_run(store_url, clean)
    assert saves >= 15  # the run is representative: many saves, of every kind
    hit = 0
    for n in range(1, saves + 1):
        with faulty_engine(store_url, 0.0) as engine:
            faults = SaveFaults(engine, set(range(n, n + burst)), after_commit=after_commit)
            key = f"n{n}-b{burst}-{after_commit}"
            output, reruns = drive_to_end(engine, key)
            # Fan-out branches finishing together may share a commit, so a run's save count
            # varies by one or two: a fault numbered past its last save hits nothing.
            hit += faults.injected > 0
            assert reruns >= (faults.injected > 0)  # the drive stopped at the fault
            run_id = engine.status(
                next(i.run_id for i in engine.runs() if i.idempotency_key == key)
            ).run_id
            assert output == expected, f"save {n}: {output} != {expected}"
            check_log(engine, run_id)
            # At-least-once inside the documented window: each fault re-runs at most the step
            # in flight (two fan-out branches at most), never a step whose completion is saved.
            extra = executions(run_id) - clean_executions
            assert 0 <= extra <= 2 * faults.injected, (n, extra)
    assert hit >= saves - 2


def test_a_drive_reloads_and_goes_on_after_a_fault_within_its_retry_budget(
    store_url: str, clean: dict[str, Any]
) -> None:
    expected, saves, clean_executions = clean_run(store_url, clean)
    for n in range(2, saves + 1):  # save 1 is the start, before any drive
        with faulty_engine(store_url, 30.0) as engine:
            faults = SaveFaults(engine, {n}, after_commit=n % 2 == 0)
            output, reruns = drive_to_end(engine, f"retry-{n}")
            assert reruns == 0  # a fault (if save n happened) never reached the caller
            assert faults.injected == 1 or n >= saves - 1
            run_id = next(i.run_id for i in engine.runs() if i.idempotency_key == f"retry-{n}")
            assert output == expected
            check_log(engine, run_id)
            resumed = [e.fields["reason"] for e in engine.history(run_id)
                       if e.event_type == "RunResumed"]
            assert resumed.count("store_fault") <= 1
            assert executions(run_id) - clean_executions <= 2


@step
def swallow_everything(offset: int) -> int:
    """Step code that catches `Exception` around its checkpoint, as real code often does."""
    ctx = step_context()
    try:
        ctx.checkpoint(object() if offset else 1)  # the second call cannot be encoded
    except Exception:
        return -1  # would record a completion (or a failure) if the error reached here
    return offset


@workflow("engine-errors-pass-through")
def two_checkpoints() -> int:
    return swallow_everything(0) + swallow_everything(1)


def test_an_unencodable_checkpoint_passes_through_step_code_and_leaves_the_run_resumable(
    store_url: str,
) -> None:
    with faulty_engine(store_url, 0.0) as engine:
        with pytest.raises(OutputEncodingError):
            engine.run(two_checkpoints, key="cp")
        run_id = next(i.run_id for i in engine.runs() if i.idempotency_key == "cp")
        kinds = [e.event_type for e in engine.history(run_id)]
        assert "StepFailed" not in kinds  # not the step's failure, no retry budget spent
        assert "RunFailed" not in kinds
        assert kinds[-1] == "StepStarted"  # the second step's start, and nothing after it
        assert not engine.status(run_id).status.is_terminal


def test_a_store_fault_inside_checkpoint_is_never_the_steps_failure(store_url: str) -> None:
    with faulty_engine(store_url, 0.0) as engine:
        SaveFaults(engine, {5}, after_commit=False)  # a checkpoint of `chunked`
        with pytest.raises(StoreWriteError):
            engine.run(faultwf.representative, {"n": 4}, key="in-step")
        run_id = next(i.run_id for i in engine.runs() if i.idempotency_key == "in-step")
        history = engine.history(run_id)
        assert history[-1].event_type == "StepCheckpointed"
        assert not [e for e in history if e.event_type in ("StepFailed", "RunFailed")]
