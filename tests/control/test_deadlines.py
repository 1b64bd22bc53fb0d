"""Deadlines and step timeouts: a run past its deadline ends `timed_out` wherever it is (in a
step, asleep, not yet started); a step attempt past its timeout fails with a retryable
`StepTimeoutError`, told at its checkpoint, or abandoned if it never checkpoints."""

from __future__ import annotations

import contextlib
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from controlkit import cli, engine_for, run_args

import controlwf
from engine import RunStatus, StepTimeoutError, step, workflow
from engine.workers.leases import DONE
from support import ledger_path

EXIT_STOPPED = 4


def _kinds(engine: Any, run_id: Any) -> list[str]:
    return [e.event_type for e in engine.history(run_id)
            if e.event_type != "StepCheckpointed"]


def test_a_workflow_timeout_stops_the_run_in_its_step(store_url: str, tmp_path: Path) -> None:
    with engine_for(store_url) as engine:
        t0 = time.monotonic()
        result = engine.run(controlwf.bounded, {"db": ledger_path(store_url, tmp_path)})
        took = time.monotonic() - t0
        assert result.status is RunStatus.TIMED_OUT
        assert 1.5 <= took < 1.5 + 2.0  # stopped at the first checkpoint past the deadline
        history = engine.history(result.run_id)
        assert _kinds(engine, result.run_id)[-2:] == ["StepPreempted", "RunTimedOut"]
        started = history[0]
        deadline = datetime.fromisoformat(str(started.fields["deadline"]))
        assert deadline - started.timestamp == timedelta(seconds=1.5)
        assert history[-1].timestamp >= deadline
        assert history[-1].fields["step_key"] == "copy_chunks#0"
        info = engine.status(result.run_id)
        assert info.reason is not None
        assert "deadline" in info.reason
        assert engine.placement(result.run_id).state == DONE


def test_a_run_past_its_deadline_before_it_runs_times_out_without_a_step(
    store_url: str, tmp_path: Path
) -> None:
    with engine_for(store_url) as engine:
        run_id = engine.start(controlwf.chunked, {"db": ledger_path(store_url, tmp_path)},
                              deadline=datetime.now(UTC) + timedelta(seconds=0.2))
        time.sleep(0.3)  # nobody drove it in time
        result = engine.resume(run_id)
        assert result.status is RunStatus.TIMED_OUT
        assert _kinds(engine, run_id) == ["RunStarted", "RunTimedOut"]


def test_a_sleeping_run_wakes_at_its_deadline_from_the_command_line(
    store_url: str, procs: Any
) -> None:
    proc = procs.spawn(run_args(store_url, "napper", {"seconds": 3600}, "--timeout", "1s"))
    t0 = time.monotonic()
    assert procs.finish(proc, timeout=30) == EXIT_STOPPED, procs.output(proc)
    assert time.monotonic() - t0 < 1.0 + 5.0  # interpreter start included
    _, err = procs.output(proc)
    assert "timed_out" in err
    assert "deadline" in err


def test_a_worker_hands_back_a_sleeping_run_until_its_deadline(store_url: str) -> None:
    with engine_for(store_url) as engine:
        run_id = engine.start(controlwf.napper, {"seconds": 3600},
                              deadline=timedelta(seconds=1))
        engine.leases.claim_run(run_id, engine.settings.worker_id, 30, workflow="napper",
                                queue="default")
        first = engine.drive_claimed(run_id, since=time.monotonic(), suspend_after_s=0.1)
        assert first.status is RunStatus.WAITING
        deadline = engine.store.load(run_id).state.deadline
        assert first.resume_at == deadline  # back at the deadline, not in an hour
        time.sleep(max(0.0, (deadline - datetime.now(UTC)).total_seconds()))
        engine.leases.claim_run(run_id, engine.settings.worker_id, 30, workflow="napper",
                                queue="default")
        second = engine.drive_claimed(run_id, since=time.monotonic(), suspend_after_s=0.1)
        assert second.status is RunStatus.TIMED_OUT


def test_a_step_past_its_timeout_fails_at_its_checkpoint_and_is_retried(store_url: str) -> None:
    with engine_for(store_url) as engine:
        result = engine.run(controlwf.step_timeout, {"pause_ms": 50})
        assert result.status is RunStatus.FAILED
        assert result.error_type == StepTimeoutError.__name__
        failed = [e for e in engine.history(result.run_id) if e.event_type == "StepFailed"]
        assert [e.fields["attempt"] for e in failed] == [1, 2, 3]  # the retry policy's three
        assert [e.fields["retryable"] for e in failed] == [True, True, False]
        for e in failed:
            assert e.fields["error_type"] == "StepTimeoutError"
            assert 0.5 <= e.fields["duration_s"] < 0.5 + 1.0
            assert "told at its checkpoint" in e.fields["message"]


def test_a_step_that_never_checkpoints_is_abandoned_past_its_timeout(store_url: str) -> None:
    with engine_for(store_url, step_timeout_grace_s=0.2) as engine:
        t0 = time.monotonic()
        result = engine.run(controlwf.stuck, {"seconds": 30})
        assert time.monotonic() - t0 < 5.0  # not the 30 s the step sleeps
        assert result.status is RunStatus.FAILED
        failed = [e for e in engine.history(result.run_id) if e.event_type == "StepFailed"]
        assert len(failed) == 2  # max_attempts=2: the timed-out attempt was retried once
        assert all("stopped waiting" in e.fields["message"] for e in failed)


def test_a_step_within_its_timeout_completes(store_url: str) -> None:
    with engine_for(store_url) as engine:
        result = engine.run(controlwf.in_time)
        assert (result.status, result.output) == (RunStatus.COMPLETED, "in time")


def test_a_step_that_swallows_its_timeout_still_fails_the_attempt(tmp_path: Path) -> None:
    @step(timeout=0.2)
    def stubborn() -> str:
        from engine import step_context

        ctx = step_context()
        time.sleep(0.3)
        with contextlib.suppress(StepTimeoutError):  # carries on regardless
            ctx.checkpoint(1)
        return "finished late"

    @workflow("stubborn")
    def wf() -> str:
        return stubborn()

    with engine_for(f"sqlite:///{tmp_path / 's.db'}") as engine:
        result = engine.run(wf)
        assert result.status is RunStatus.FAILED
        assert result.error_type == "StepTimeoutError"


@pytest.mark.parametrize("bad", ["-5s", "0", "soon", "2 hours", "nan"])
def test_a_bad_timeout_is_refused_with_nothing_written(tmp_path: Path, bad: str) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    r = cli("run", "controlwf:napper", "--timeout", bad, "--db", url)
    assert r.returncode == 2, r.stderr
    assert "is not a positive duration" in r.stderr
    assert not (tmp_path / "s.db").exists()


def test_a_bad_timeout_in_code_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="positive duration"):
        step(timeout=0)(lambda: None)
    with pytest.raises(ValueError, match="positive duration"):
        workflow("w", timeout=timedelta(seconds=-1))
    url = f"sqlite:///{tmp_path / 's.db'}"
    with engine_for(url) as engine, pytest.raises(ValueError, match="zone"):
        engine.start(controlwf.napper, {}, deadline=datetime(2030, 1, 1))
