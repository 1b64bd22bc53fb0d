"""The testing module: faults land where they are aimed, resume continues exactly there.

Executions are counted by the steps themselves in an `IdempotencyLedger`, so the checks do
not rely on the harness's or the log's own view of what ran.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import billing
import kitwf
import pytest

from engine import NonDeterminismError, RunStatus, step, workflow
from engine.testing import (
    Fault,
    FaultNotReachedError,
    IdempotencyLedger,
    ReplayMismatchError,
    WorkflowHarness,
    replay_history,
)

POSTS = 4
KEYS = kitwf.step_keys(POSTS)


@pytest.fixture
def harness(store_url: str) -> Iterator[WorkflowHarness]:
    with WorkflowHarness(database_url=store_url) as h:
        yield h


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[IdempotencyLedger]:
    with IdempotencyLedger(tmp_path / "ledger.db") as led:
        yield led
    kitwf._ledgers.clear()


def executions(led: IdempotencyLedger, run_id: object) -> dict[str, int]:
    """Executions per step key, as the steps counted them."""
    prefix = f"{run_id}/"
    return {k.removeprefix(prefix): n for k, n in led.attempts().items()
            if k.startswith(prefix) and "/" not in k.removeprefix(prefix)}


def reference_output(ledger_path: Path) -> Any:
    with WorkflowHarness() as h, IdempotencyLedger(ledger_path):
        out = h.run(kitwf.pipeline, {"ledger": str(ledger_path), "posts": POSTS})
    assert out.status is RunStatus.COMPLETED
    return out.output


def test_temporary_store_runs_to_completion_and_is_removed() -> None:
    with WorkflowHarness() as h:
        url = h.database_url
        db = Path(url.removeprefix("sqlite:///"))
        @workflow("kit-tiny")
        def tiny(n: int) -> int:
            return n + 1
        out = h.run(tiny, {"n": 1})
        assert (out.status, out.output, out.interrupted) == (RunStatus.COMPLETED, 2, False)
        assert db.exists()
    assert not db.parent.exists()


@pytest.mark.parametrize("when", ["start", "end"])
def test_crash_at_step_n_kills_the_process_and_resume_reruns_only_that_step(
    harness: WorkflowHarness, ledger: IdempotencyLedger, tmp_path: Path, when: str
) -> None:
    inputs = {"ledger": ledger.path, "posts": POSTS}
    first = harness.run(kitwf.pipeline, inputs, fault=Fault.crash(step=3, when=when))  # type: ignore[arg-type]
    assert first.interrupted
    # A dead process records nothing about dying: the log says running, its lease says nobody.
    assert first.status is RunStatus.INTERRUPTED
    ran = executions(ledger, first.run_id)
    # The third execution is post#1: it started (and, at "end", ran) but never completed.
    expected = {"post#0": 1, "process_chunks#0": 1} | ({"post#1": 1} if when == "end" else {})
    assert ran == expected
    assert harness.attempts(first.run_id) == {"post#0": 1, "process_chunks#0": 1, "post#1": 1}

    done = harness.resume(first.run_id)
    assert done.status is RunStatus.COMPLETED
    assert done.output == reference_output(tmp_path / "ref-ledger.db")
    ran = executions(ledger, first.run_id)
    assert ran == {k: (2 if k == "post#1" and when == "end" else 1) for k in KEYS}
    assert harness.attempts(first.run_id) == {k: (2 if k == "post#1" else 1) for k in KEYS}
    ledger.assert_each_effect_once()
    assert ledger.retried() == ({f"{first.run_id}/post#1": 2} if when == "end" else {})


@pytest.mark.parametrize("kind", ["crash", "halt", "preempt"])
def test_fault_at_checkpoint_k_resumes_from_that_checkpoint(
    harness: WorkflowHarness, ledger: IdempotencyLedger, kind: str
) -> None:
    k = 2
    fault = Fault(kind, step="process_chunks", checkpoint=k)  # type: ignore[arg-type]
    first = harness.run(kitwf.pipeline, {"ledger": ledger.path, "posts": POSTS, "chunks": 5},
                        fault=fault)
    assert first.interrupted
    run_id = first.run_id
    chunk = f"{run_id}/process_chunks#0"
    # A crash or a halt leaves the log saying running with nobody holding it: interrupted.
    expected_status = RunStatus.PREEMPTED if kind == "preempt" else RunStatus.INTERRUPTED
    assert first.status is expected_status
    checkpoints = [e.fields for e in harness.history(run_id) if e.event_type == "StepCheckpointed"]
    assert [c["state"] for c in checkpoints] == [1, 2]
    assert set(ledger.effects()) >= {f"{chunk}/chunk/0", f"{chunk}/chunk/1"}
    assert f"{chunk}/chunk/2" not in ledger.effects()

    done = harness.resume(run_id)
    assert done.status is RunStatus.COMPLETED
    assert executions(ledger, run_id) == {k: (2 if k == "process_chunks#0" else 1) for k in KEYS}
    starts = sorted(k for k in ledger.effects() if k.startswith(f"{chunk}/start/"))
    assert starts == [f"{chunk}/start/0", f"{chunk}/start/{k}"]
    # No chunk before the checkpoint ran again: every chunk was attempted exactly once.
    assert all(ledger.attempts()[f"{chunk}/chunk/{i}"] == 1 for i in range(5))
    ledger.assert_each_effect_once()


def test_preempt_at_step_n_stops_at_the_next_boundary(
    harness: WorkflowHarness, ledger: IdempotencyLedger
) -> None:
    first = harness.run(kitwf.pipeline, {"ledger": ledger.path, "posts": POSTS},
                        fault=Fault.preempt(step="post#1"))
    assert first.status is RunStatus.PREEMPTED
    # post#1 has no checkpoint, so it finished; the run stopped before post#2.
    assert harness.attempts(first.run_id) == {"post#0": 1, "process_chunks#0": 1, "post#1": 1}
    assert harness.resume(first.run_id).status is RunStatus.COMPLETED
    assert executions(ledger, first.run_id) == dict.fromkeys(KEYS, 1)


def test_a_fault_the_drive_never_reaches_is_an_error(
    harness: WorkflowHarness, ledger: IdempotencyLedger
) -> None:
    with pytest.raises(FaultNotReachedError, match="before the fault's point"):
        harness.run(kitwf.pipeline, {"ledger": ledger.path, "posts": 2},
                    fault=Fault.halt(step=9))


def test_crash_needs_an_importable_workflow(harness: WorkflowHarness) -> None:
    @workflow("kit-local")
    def local() -> int:
        return 1

    with pytest.raises(ValueError, match="module level"):
        harness.run(local, fault=Fault.crash(step=1))


# -- the ledger ---------------------------------------------------------------------------
def test_ledger_keeps_each_key_once_and_names_what_broke_the_contract(
    ledger: IdempotencyLedger,
) -> None:
    assert ledger.apply("a", 1) is True
    assert ledger.apply("a", 1) is False
    assert ledger.apply("b", {"x": 1}) is True
    assert ledger.effects() == {"a": 1, "b": {"x": 1}}
    assert ledger.retried() == {"a": 2}
    ledger.assert_each_effect_once(["a", "b"])
    with pytest.raises(AssertionError, match=r"never applied: \['c'\]"):
        ledger.assert_each_effect_once(["a", "b", "c"])
    with pytest.raises(AssertionError, match="not expected"):
        ledger.assert_each_effect_once(["a"])
    ledger.apply("b", {"x": 2})  # a retry that computes another effect
    with pytest.raises(AssertionError, match="attempted again with"):
        ledger.assert_each_effect_once()


# -- replay -------------------------------------------------------------------------------
@step
def add_one(n: int) -> int:
    return n + 1


@step
def double(n: int) -> int:
    return n * 2


@workflow("kit-replay")
def arithmetic(n: int) -> int:
    return double(add_one(n))


def test_replay_history_accepts_the_same_code_and_names_a_divergence() -> None:
    @workflow("kit-replay")
    def reordered(n: int) -> int:
        return add_one(double(n))

    @workflow("kit-replay")
    def other_output(n: int) -> int:
        return double(add_one(n)) + 1

    with WorkflowHarness() as h:
        out = h.run(arithmetic, {"n": 3})
        assert out.output == 8
        report = replay_history(h.engine, out.run_id, arithmetic)
        assert (report.steps_replayed, report.stopped_at) == (2, None)
        with pytest.raises(NonDeterminismError, match=r"'add_one#0'.*'double#0'"):
            replay_history(h.engine, out.run_id, reordered)
        with pytest.raises(ReplayMismatchError, match="returns 9"):
            replay_history(h.engine, out.run_id, other_output)

        halted = h.run(arithmetic, {"n": 5}, fault=Fault.halt(step="double"))
        report = replay_history(h.engine, halted.run_id, arithmetic)
        assert (report.steps_replayed, report.stopped_at) == (1, "double#0")


# -- the example of docs/operations.md ----------------------------------------------------
def test_the_documented_example(tmp_path: Path) -> None:
    with IdempotencyLedger(tmp_path / "ledger.db") as ledger, WorkflowHarness() as h:
        inputs = {"ledger": ledger.path, "customers": ["a", "b", "c"]}
        first = h.run(billing.bill, inputs, fault=Fault.crash(step=2, when="end"))
        assert first.interrupted

        done = h.resume(first.run_id)
        assert done.status is RunStatus.COMPLETED
        assert h.attempts(first.run_id) == {"charge#0": 1, "charge#1": 2, "charge#2": 1}
        ledger.assert_each_effect_once()
        replay_history(h.engine, first.run_id)
        assert ledger.retried() == {f"{first.run_id}/charge#1": 2}
        assert done.output == ["a", "b", "c"]
