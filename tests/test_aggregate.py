"""The WorkflowRun aggregate alone: given events, the state and the commands it allows.

Pure: no store, no clock, no driver. Every event type has a case here; a new event type in
`engine.events` without one fails `test_every_event_type_has_a_case`.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from engine import events as ev
from engine.aggregate import RunCommandError, WorkflowRun
from engine.status import STATUS_AFTER, RunStatus, StepStatus

T = datetime(2026, 1, 1, tzinfo=UTC)
W = "w"


def started(deadline: datetime | None = None) -> WorkflowRun:
    return WorkflowRun.start(
        uuid.uuid4(), at=T, worker=W, workflow="wf", workflow_version=1, entrypoint="m:wf",
        code_fingerprint="f", input={"n": 1}, input_digest="d", idempotency_key=None,
        deadline=deadline,
    )


def running_step(run: WorkflowRun, key: str = "a#0", attempt: int = 1) -> WorkflowRun:
    run.start_step(key, key.partition("#")[0], attempt, at=T, worker=W)
    return run


Case = tuple[Callable[[], WorkflowRun], Callable[[WorkflowRun], None],
             Callable[[WorkflowRun], None]]
"""(a run to start from, the command that records the event, a check of the state after)"""


def _check_started(run: WorkflowRun) -> None:
    assert (run.status, run.state.workflow, run.state.input) == (RunStatus.PENDING, "wf",
                                                                 {"n": 1})


CASES: dict[type[ev.RunEvent], Case] = {
    ev.RunStarted: (started, lambda r: None, _check_started),
    ev.RunResumed: (
        lambda: running_step(started()),
        lambda r: r.resume(ev.ResumeReason.CRASH_RECOVERY, at=T, worker="w2"),
        lambda r: (r.status is RunStatus.RUNNING and r.state.last_reason == "crash_recovery"
                   and r.state.worker_id == "w2") or pytest.fail("resumed"),
    ),
    ev.StepStarted: (
        started,
        lambda r: r.start_step("a#0", "a", 1, at=T, worker=W),
        lambda r: (r.status is RunStatus.RUNNING
                   and r.steps["a#0"].status is StepStatus.RUNNING) or pytest.fail("started"),
    ),
    ev.StepCheckpointed: (
        lambda: running_step(started()),
        lambda r: r.checkpoint_step("a#0", 1, 1, {"offset": 5}, 5, 10, at=T, worker=W),
        lambda r: (r.steps["a#0"].checkpoint == {"offset": 5}
                   and r.steps["a#0"].checkpoint_sequence == 1) or pytest.fail("checkpoint"),
    ),
    ev.StepCompleted: (
        lambda: running_step(started()),
        lambda r: r.complete_step("a#0", 1, 42, 0.1, at=T, worker=W),
        lambda r: (r.steps["a#0"].status is StepStatus.COMPLETED
                   and r.steps["a#0"].output == 42 and r.completed_steps == 1)
        or pytest.fail("completed"),
    ),
    ev.StepFailed: (
        lambda: running_step(started()),
        lambda r: r.fail_step("a#0", 1, "OSError", "boom", retryable=True,
                              next_attempt_at=T + timedelta(seconds=1), duration_s=0.1,
                              at=T, worker=W),
        lambda r: (r.steps["a#0"].status is StepStatus.FAILED and r.steps["a#0"].failures == 1
                   and r.steps["a#0"].retryable) or pytest.fail("failed"),
    ),
    ev.StepPreempted: (
        lambda: running_step(started()),
        lambda r: r.preempt_step("a#0", 1, 0, "SIGTERM", at=T, worker=W),
        lambda r: r.steps["a#0"].status is StepStatus.PREEMPTED or pytest.fail("preempted"),
    ),
    ev.TimerStarted: (
        started,
        lambda r: r.start_timer("sleep#0", T + timedelta(hours=1), 3600, at=T, worker=W),
        lambda r: (r.status is RunStatus.WAITING
                   and r.steps["sleep#0"].wake_at == T + timedelta(hours=1))
        or pytest.fail("timer"),
    ),
    ev.TimerFired: (
        lambda: _timer(started()),
        lambda r: r.fire_timer("sleep#0", at=T, worker=W),
        lambda r: (r.status is RunStatus.RUNNING
                   and r.steps["sleep#0"].status is StepStatus.COMPLETED)
        or pytest.fail("fired"),
    ),
    ev.RunPreempted: (
        lambda: running_step(started()),
        lambda r: r.preempt("SIGTERM", at=T, worker=W),
        lambda r: (r.status is RunStatus.PREEMPTED and r.state.last_reason == "SIGTERM")
        or pytest.fail("run preempted"),
    ),
    ev.RunCompleted: (
        started,
        lambda r: r.complete({"ok": True}, at=T, worker=W),
        lambda r: (r.status is RunStatus.COMPLETED and r.state.output == {"ok": True})
        or pytest.fail("run completed"),
    ),
    ev.RunFailed: (
        started,
        lambda r: r.fail("ValueError", "bad", "a#0", at=T, worker=W),
        lambda r: (r.status is RunStatus.FAILED and r.state.error is not None
                   and r.state.error.step_key == "a#0") or pytest.fail("run failed"),
    ),
    ev.RunCancelled: (
        started,
        lambda r: r.cancel("ops", "not needed", at=T, worker=W),
        lambda r: (r.status is RunStatus.CANCELLED and r.state.last_reason == "ops: not needed")
        or pytest.fail("cancelled"),
    ),
    ev.RunTimedOut: (
        lambda: running_step(started(deadline=T + timedelta(hours=1))),
        lambda r: r.time_out("a#0", at=T, worker=W),
        lambda r: (r.status is RunStatus.TIMED_OUT and r.state.deadline is not None
                   and r.state.last_reason is not None and "deadline" in r.state.last_reason)
        or pytest.fail("timed out"),
    ),
    ev.PatchMarked: (
        started,
        lambda r: r.mark_patch("fix-1", at=T, worker=W),
        lambda r: r.state.patches == ["fix-1"] or pytest.fail("patch"),
    ),
    ev.StepReused: (
        started,
        lambda r: r.reuse_step("a#0", "a", 7, uuid.UUID(int=1), at=T, worker=W),
        lambda r: (r.steps["a#0"].status is StepStatus.COMPLETED and r.steps["a#0"].output == 7)
        or pytest.fail("reused"),
    ),
    ev.RunParked: (
        lambda: running_step(started()),
        lambda r: r.park("diverged", "a#0", "b#0", 0, at=T, worker=W),
        lambda r: (r.status is RunStatus.PARKED and r.state.parked is not None
                   and r.state.parked.expected == "a#0") or pytest.fail("parked"),
    ),
    ev.CheckpointValidated: (
        lambda: _checkpointed(running_step(started())),
        lambda r: r.validate_checkpoint(
            "a#0", 1, ev.CheckpointOutcome.FELL_BACK, sequence=3, reason="effects missing",
            checkpoint_version=1, step_version=2, resumed_from=2, state={"offset": 2},
            at=T, worker=W),
        lambda r: (r.steps["a#0"].checkpoint == {"offset": 2}
                   and r.steps["a#0"].checkpoint_sequence == 3
                   and r.state.checkpoint_meta["a#0"].version == 2
                   and r.state.checkpoint_meta["a#0"].discarded == [(3, 3)])
        or pytest.fail("validated"),
    ),
    ev.MessageAwaited: (
        started,
        lambda r: r.await_message("receive#0", "approval", T + timedelta(hours=1), at=T,
                                  worker=W),
        lambda r: (r.status is RunStatus.WAITING and r.state.awaiting == "approval"
                   and r.steps["receive#0"].wake_at == T + timedelta(hours=1))
        or pytest.fail("awaited"),
    ),
    ev.MessageReceived: (
        lambda: _awaiting(started()),
        lambda r: r.receive_message("receive#0", "approval", "m1", {"ok": True}, T, at=T,
                                    worker=W),
        lambda r: (r.status is RunStatus.RUNNING and r.state.awaiting is None
                   and r.state.received == ["m1"]
                   and r.steps["receive#0"].status is StepStatus.COMPLETED
                   and r.steps["receive#0"].output == {"ok": True}) or pytest.fail("received"),
    ),
    ev.ValuePublished: (
        started,
        lambda r: r.publish("publish#0", "export", {"path": "out.csv"}, at=T, worker=W),
        lambda r: (r.state.published == {"export": {"path": "out.csv"}}
                   and r.steps["publish#0"].status is StepStatus.COMPLETED)
        or pytest.fail("published"),
    ),
    ev.ChildStarted: (
        started,
        lambda r: r.start_child("child#0", uuid.UUID(int=7), "kid", at=T, worker=W),
        lambda r: (r.status is RunStatus.WAITING and r.state.children == {
            "child#0": uuid.UUID(int=7)} and r.steps["child#0"].status is StepStatus.WAITING)
        or pytest.fail("child started"),
    ),
    ev.ChildFinished: (
        lambda: _with_child(started()),
        lambda r: r.finish_child("child#0", "failed", None, "ValueError", "bad", at=T,
                                 worker=W),
        lambda r: (r.status is RunStatus.RUNNING
                   and r.steps["child#0"].status is StepStatus.FAILED
                   and r.steps["child#0"].error is not None
                   and r.steps["child#0"].error.error_type == "ValueError")
        or pytest.fail("child finished"),
    ),
}


def _checkpointed(run: WorkflowRun) -> WorkflowRun:
    for n in (1, 2, 3):
        run.checkpoint_step("a#0", 1, n, {"offset": n}, None, None, at=T, worker=W,
                            effects=[f"row-{n}"])
    return run


def _with_child(run: WorkflowRun) -> WorkflowRun:
    run.start_child("child#0", uuid.UUID(int=7), "kid", at=T, worker=W)
    return run


def _awaiting(run: WorkflowRun) -> WorkflowRun:
    run.await_message("receive#0", "approval", None, at=T, worker=W)
    return run


def _timer(run: WorkflowRun) -> WorkflowRun:
    run.start_timer("sleep#0", T + timedelta(hours=1), 3600, at=T, worker=W)
    return run


def test_every_event_type_has_a_case() -> None:
    assert set(CASES) == set(ev.EVENT_TYPES), set(ev.EVENT_TYPES) ^ set(CASES)


@pytest.mark.parametrize("event_class", ev.EVENT_TYPES, ids=lambda c: c.__name__)
def test_each_event_folds_to_the_expected_state(event_class: type[ev.RunEvent]) -> None:
    make, command, check = CASES[event_class]
    run = make()
    before = run.version
    command(run)
    pending = run.pending_events
    if event_class is not ev.RunStarted:
        assert [type(e) for e in pending[before:]][-1:] == [event_class]
    check(run)
    # The status table is the one the aggregate folds with.
    expected = STATUS_AFTER.get(event_class)
    if expected is not None:
        assert run.status is expected
    # Replaying the recorded events gives the same state: `when` is the only fold.
    replayed: Any = None
    for event in run.collect_events():
        replayed = event.mutate(replayed)
    assert replayed.state == run.state


TERMINATORS = {
    "completed": lambda r: r.complete(1, at=T, worker=W),
    "failed": lambda r: r.fail("E", "m", None, at=T, worker=W),
    "cancelled": lambda r: r.cancel("ops", "why", at=T, worker=W),
    "timed_out": lambda r: r.time_out(None, at=T, worker=W),
}


@pytest.mark.parametrize("end", TERMINATORS)
@pytest.mark.parametrize("event_class", [c for c in ev.EVENT_TYPES if c is not ev.RunStarted],
                         ids=lambda c: c.__name__)
def test_nothing_follows_a_terminal_event(end: str, event_class: type[ev.RunEvent]) -> None:
    make, command, _ = CASES[event_class]
    run = make()
    if run.state.deadline is None:
        run.state.deadline = T  # only a run with a deadline can pass it
    TERMINATORS[end](run)
    version = run.version
    with pytest.raises(RunCommandError, match="nothing may follow its end"):
        command(run)
    assert run.version == version  # nothing was recorded


@pytest.mark.parametrize("command", [
    lambda r: r.checkpoint_step("a#0", 1, 1, 0, None, None, at=T, worker=W),
    lambda r: r.complete_step("a#0", 1, 0, 0.0, at=T, worker=W),
    lambda r: r.fail_step("a#0", 1, "E", "m", retryable=False, next_attempt_at=None,
                          duration_s=0.0, at=T, worker=W),
    lambda r: r.preempt_step("a#0", 1, 0, "x", at=T, worker=W),
], ids=["checkpoint", "complete", "fail", "preempt"])
def test_a_step_attempt_is_written_to_only_while_it_runs(
    command: Callable[[WorkflowRun], None],
) -> None:
    never_started = started()
    with pytest.raises(RunCommandError):
        command(never_started)
    finished = running_step(started())
    finished.complete_step("a#0", 1, 0, 0.0, at=T, worker=W)
    with pytest.raises(RunCommandError):
        command(finished)
    other_attempt = running_step(started(), attempt=2)
    with pytest.raises(RunCommandError):
        command(other_attempt)
    command(running_step(started()))  # the running attempt itself: allowed


def test_a_completed_step_is_not_started_again_and_a_timer_fires_once() -> None:
    run = running_step(started())
    run.complete_step("a#0", 1, 0, 0.0, at=T, worker=W)
    with pytest.raises(RunCommandError):
        run.start_step("a#0", "a", 2, at=T, worker=W)
    run = _timer(started())
    run.fire_timer("sleep#0", at=T, worker=W)
    with pytest.raises(RunCommandError):
        run.fire_timer("sleep#0", at=T, worker=W)


def test_events_chain_their_hashes() -> None:
    run = running_step(started())
    run.complete_step("a#0", 1, 0, 0.0, at=T, worker=W)
    events = run.collect_events()
    assert events[0].prev_hash is None
    for before, after in itertools.pairwise(events):
        assert after.prev_hash == before.hash


@pytest.mark.parametrize("end", TERMINATORS)
def test_only_a_cancelled_or_timed_out_run_is_reopened_and_only_by_force(end: str) -> None:
    run = running_step(started(deadline=T))
    TERMINATORS[end](run)
    with pytest.raises(RunCommandError):
        run.resume(ev.ResumeReason.CRASH_RECOVERY, at=T, worker=W)
    if run.status in (RunStatus.COMPLETED, RunStatus.FAILED):
        with pytest.raises(RunCommandError, match="only a cancelled or timed-out run"):
            run.resume(ev.ResumeReason.FORCED, at=T, worker=W)
        return
    run.resume(ev.ResumeReason.FORCED, at=T, worker=W)
    assert run.status is RunStatus.RUNNING
    assert run.state.deadline is None  # the deadline that ended it no longer applies
    run.start_step("a#0", "a", 2, at=T, worker=W)  # the run goes on from its log


def test_a_forced_resume_of_a_running_run_is_refused() -> None:
    run = running_step(started())
    with pytest.raises(RunCommandError, match="only a cancelled or timed-out run"):
        run.resume(ev.ResumeReason.FORCED, at=T, worker=W)


def test_a_message_is_consumed_once_and_a_receive_completes_once() -> None:
    run = _awaiting(started())
    run.receive_message("receive#0", "approval", "m1", 1, T, at=T, worker=W)
    with pytest.raises(RunCommandError, match="received already"):
        run.receive_message("receive#0", "approval", "m2", 2, T, at=T, worker=W)
    with pytest.raises(RunCommandError, match="consumed already"):
        run.receive_message("receive#1", "approval", "m1", 1, T, at=T, worker=W)
    run.receive_message("receive#1", "approval", None, None, None, at=T, worker=W)  # timed out
    assert run.state.received == ["m1"]


def test_a_child_is_started_once_and_finished_once() -> None:
    run = _with_child(started())
    with pytest.raises(RunCommandError, match="started already"):
        run.start_child("child#0", uuid.UUID(int=8), "kid", at=T, worker=W)
    run.finish_child("child#0", "completed", 3, None, None, at=T, worker=W)
    assert run.steps["child#0"].output == 3
    with pytest.raises(RunCommandError, match="no child child#0 is waited for"):
        run.finish_child("child#0", "completed", 3, None, None, at=T, worker=W)
