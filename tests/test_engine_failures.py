"""Retries with backoff, errors never retried, exhausted attempts, idempotency keys."""

from __future__ import annotations

from collections import Counter
from datetime import datetime

import pytest

from engine import (
    Engine,
    IdempotencyConflictError,
    NonRetryableError,
    RetryPolicy,
    RunStatus,
    StepFailedError,
    WorkflowFailedError,
    step,
    workflow,
)

FAST = RetryPolicy(max_attempts=4, initial_interval_s=0.02, backoff=2.0, jitter=0.0)


def test_retry_with_backoff_then_success(engine: Engine) -> None:
    calls: Counter[str] = Counter()

    @step(retry=FAST)
    def flaky() -> str:
        calls["flaky"] += 1
        if calls["flaky"] < 3:
            raise ConnectionError(f"try {calls['flaky']}")
        return "ok"

    @workflow("retrying")
    def flow() -> str:
        return flaky()

    result = engine.run(flow, {})
    assert result.status is RunStatus.COMPLETED
    assert result.output == "ok"
    failures = [h for h in engine.history(result.run_id) if h.event_type == "StepFailed"]
    assert [f.fields["attempt"] for f in failures] == [1, 2]
    assert all(f.fields["retryable"] for f in failures)
    waits = [
        (datetime.fromisoformat(f.fields["next_attempt_at"]) - f.timestamp).total_seconds()
        for f in failures
    ]
    assert waits[0] == pytest.approx(0.02, abs=0.01)
    assert waits[1] == pytest.approx(0.04, abs=0.01)
    info = engine.status(result.run_id)
    assert info.attempts == 3


def test_non_retryable_error_fails_the_run_at_once(engine: Engine) -> None:
    calls: Counter[str] = Counter()

    class BadRecordError(NonRetryableError):
        pass

    @step(retry=FAST)
    def parse() -> None:
        calls["parse"] += 1
        raise BadRecordError("row 7 has no id")

    @step(retry=RetryPolicy(max_attempts=5, non_retryable=(KeyError,)))
    def lookup() -> None:
        calls["lookup"] += 1
        raise KeyError("missing")

    @workflow("bad-data")
    def flow(which: str) -> None:
        return parse() if which == "parse" else lookup()

    for which in ("parse", "lookup"):
        result = engine.run(flow, {"which": which})
        assert result.status is RunStatus.FAILED
        assert calls[which] == 1
    assert result.error_type == "KeyError"
    with pytest.raises(WorkflowFailedError, match="KeyError"):
        engine.result(result.run_id)


def test_exhausted_attempts_fail_the_run_with_the_step_error(engine: Engine) -> None:
    calls: Counter[str] = Counter()

    @step(retry=RetryPolicy(max_attempts=3, initial_interval_s=0.0))
    def always() -> None:
        calls["always"] += 1
        raise TimeoutError("upstream timed out")

    @workflow("exhausting")
    def flow() -> None:
        always()

    result = engine.run(flow, {})
    assert calls["always"] == 3
    assert result.status is RunStatus.FAILED
    assert (result.error_type, result.error_message) == ("TimeoutError", "upstream timed out")
    history = engine.history(result.run_id)
    assert history[-1].event_type == "RunFailed"
    assert history[-1].fields["step_key"] == "always#0"
    assert [h.fields["retryable"] for h in history if h.event_type == "StepFailed"] == [
        True,
        True,
        False,
    ]
    # A failed run stays failed: resuming neither reruns nor changes it.
    assert engine.resume(result.run_id) == result
    assert calls["always"] == 3


def test_workflow_can_catch_a_failed_step_and_replay_sees_the_same_failure(
    engine: Engine,
) -> None:
    calls: Counter[str] = Counter()

    @step(retry=RetryPolicy(max_attempts=1))
    def charge() -> None:
        calls["charge"] += 1
        raise ValueError("card declined")

    @step
    def pause() -> str:
        calls["pause"] += 1
        if calls["pause"] == 1:
            engine.preempt("stop")
            from engine import step_context

            step_context().checkpoint(None)
        return "refunded"

    @workflow("compensating")
    def flow() -> str:
        try:
            charge()
        except StepFailedError as e:
            return pause() if e.error_type == "ValueError" else "wrong error"
        return "charged"

    first = engine.run(flow, {})
    assert first.status is RunStatus.PREEMPTED
    engine.token.clear()
    assert engine.resume(first.run_id).output == "refunded"
    assert calls == {"charge": 1, "pause": 2}


def test_idempotency_key_gives_one_run(engine: Engine) -> None:
    calls: Counter[str] = Counter()

    @step
    def effect(n: int) -> int:
        calls["effect"] += 1
        return n

    @workflow("keyed")
    def flow(n: int) -> int:
        return effect(n)

    a = engine.run(flow, {"n": 1}, key="order-42")
    b = engine.run(flow, {"n": 1}, key="order-42")
    assert a == b
    assert calls["effect"] == 1
    assert len(engine.runs()) == 1
    with pytest.raises(IdempotencyConflictError, match="order-42"):
        engine.start(flow, {"n": 2}, key="order-42")
    assert len(engine.runs()) == 1
    # Another key (or none) is another run.
    assert engine.run(flow, {"n": 1}, key="order-43").run_id != a.run_id
    assert len(engine.runs()) == 2


def test_workflow_body_error_fails_the_run(engine: Engine) -> None:
    @workflow("broken-body")
    def flow() -> None:
        raise RuntimeError("bug in workflow code")

    result = engine.run(flow, {})
    assert result.status is RunStatus.FAILED
    assert result.error_type == "RuntimeError"


def test_preemptions_do_not_spend_the_retry_budget(engine: Engine) -> None:
    from engine import step_context

    calls: Counter[str] = Counter()

    @step(retry=RetryPolicy(max_attempts=2, initial_interval_s=0.0))
    def fragile() -> str:
        calls["fragile"] += 1
        ctx = step_context()
        if calls["fragile"] <= 3:  # interrupted three times, more than max_attempts
            engine.preempt("maintenance")
            ctx.checkpoint(calls["fragile"])
        if calls["fragile"] == 4:
            raise ConnectionError("one transient failure")
        return "done"

    @workflow("preempted-often")
    def flow() -> str:
        return fragile()

    run_id = engine.start(flow, {})
    for _ in range(3):
        assert engine.resume(run_id).status is RunStatus.PREEMPTED
        engine.token.clear()
    result = engine.resume(run_id)
    assert result.status is RunStatus.COMPLETED, result
    assert calls["fragile"] == 5
    failed = [h for h in engine.history(run_id) if h.event_type == "StepFailed"]
    assert [f.fields["retryable"] for f in failed] == [True]
