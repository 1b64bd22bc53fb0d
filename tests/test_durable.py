"""Durable sleep and fan-out inside one run, driven in-process on both stores."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import pytest

from engine import (
    NO_RETRY,
    Engine,
    NonDeterminismError,
    RunStatus,
    gather,
    sleep,
    step,
    step_context,
    workflow,
)
from support import call_when

executions: Counter[str] = Counter()
running = 0
peak = 0
_lock = threading.Lock()
stop_after: dict[str, int] = {}
on_stop: list[Any] = []  # called by the branch at `stop_after["preempt_at"]` (engine.preempt)


@pytest.fixture(autouse=True)
def _reset() -> None:
    global running, peak
    executions.clear()
    stop_after.clear()
    on_stop.clear()
    running = peak = 0


@step
def square(i: int, pause_s: float) -> int:
    global running, peak
    ctx = step_context()
    with _lock:
        executions[ctx.step_key] += 1
        running += 1
        peak = max(peak, running)
    try:
        time.sleep(pause_s)
        if i == stop_after.get("preempt_at"):
            for hook in on_stop:
                hook()
            ctx.checkpoint({"half": True})  # the token is set: this unwinds the branch
        return i * i
    finally:
        with _lock:
            running -= 1


@step(retry=NO_RETRY)
def explode(i: int) -> int:
    raise ValueError(f"branch {i} is broken")


@workflow("fan_out")
def fan_out(width: int = 8, limit: int = 3, pause_s: float = 0.05) -> list[int]:
    return gather([square.bind(i, pause_s) for i in range(width)], limit=limit)


@workflow("fan_fail")
def fan_fail() -> list[int]:
    return gather([square.bind(0, 0.01), explode.bind(1), square.bind(2, 0.01)], limit=1)


SWAPPED = {"on": False}


@step
def cube(i: int) -> int:
    return i**3


@workflow("fan_changed")
def fan_changed(width: int = 4) -> list[int]:
    calls: list[Any] = [square.bind(i, 0.05) for i in range(width)]
    if SWAPPED["on"]:  # a deploy that put another step first
        calls.insert(0, cube.bind(9))
    return gather(calls, limit=1)


@workflow("napper")
def napper(seconds: float = 0.3) -> str:
    sleep(seconds)
    return "rested"


def test_gather_runs_branches_in_parallel_up_to_the_limit_in_stable_order(
    engine: Engine,
) -> None:
    result = engine.run(fan_out, {"width": 8, "limit": 3, "pause_s": 0.1})
    assert result.status is RunStatus.COMPLETED
    assert result.output == [i * i for i in range(8)]
    assert peak == 3
    started = [e.fields["step_key"] for e in engine.history(result.run_id)
               if e.event_type == "StepStarted"]
    assert started == [f"square#{i}" for i in range(8)]  # list order, whatever the timing


def test_a_preempted_fan_out_resumes_only_unfinished_branches(engine: Engine) -> None:
    stop_after["preempt_at"] = 4  # branch 4 preempts the run, then checkpoints
    on_stop.append(lambda: engine.preempt("test preemption"))
    first = engine.run(fan_out, {"width": 10, "limit": 2, "pause_s": 0.1})
    assert first.status is RunStatus.PREEMPTED
    engine.token.clear()
    stop_after.clear()
    second = engine.resume(first.run_id)
    assert second.status is RunStatus.COMPLETED
    assert second.output == [i * i for i in range(10)]
    history = engine.history(first.run_id)
    resumed_at = _resumed_at(engine, first.run_id)
    finished_before = {e.fields["step_key"] for e in history
                       if e.event_type == "StepCompleted" and e.version < resumed_at}
    interrupted = {e.fields["step_key"] for e in history if e.event_type == "StepPreempted"}
    assert finished_before
    assert interrupted
    for key in finished_before:
        assert executions[key] == 1  # a finished branch never runs again
    # Every branch ran once, plus once more for each branch the preemption cut short.
    assert sum(executions.values()) == 10 + len(interrupted)


def _asleep(engine: Engine, run_id: Any) -> bool:
    return any(e.event_type == "TimerStarted" for e in engine.history(run_id))


def _resumed_at(engine: Engine, run_id: Any) -> int:
    return next(e.version for e in engine.history(run_id) if e.event_type == "RunResumed")


def test_a_failed_branch_stops_new_branches_and_fails_the_run(engine: Engine) -> None:
    result = engine.run(fan_fail)
    assert result.status is RunStatus.FAILED
    assert result.error_type == "ValueError"
    assert "branch 1 is broken" in (result.error_message or "")
    assert executions == Counter({"square#0": 1})  # square#1 (third call) never started


def test_a_changed_fan_out_is_a_divergence_and_parks_the_run(engine: Engine) -> None:
    stop_after["preempt_at"] = 1
    on_stop.append(lambda: engine.preempt("stop mid fan-out"))
    run_id = engine.start(fan_changed, {"width": 4})
    assert engine.resume(run_id).status is RunStatus.PREEMPTED
    engine.token.clear()
    stop_after.clear()
    assert "square#0" in engine.store.load(run_id).steps
    version = engine.status(run_id).version
    SWAPPED["on"] = True
    try:
        with pytest.raises(NonDeterminismError, match="square#0"):
            engine.resume(run_id)
    finally:
        SWAPPED["on"] = False
    assert engine.status(run_id).version == version + 1  # RunParked, and nothing else
    assert engine.history(run_id)[-1].event_type == "RunParked"
    assert engine.resume(run_id).output == [0, 1, 4, 9]


def test_durable_sleep_keeps_its_deadline_across_a_preemption(engine: Engine) -> None:
    run_id = engine.start(napper, {"seconds": 0.6})
    waker = call_when(lambda: _asleep(engine, run_id), lambda: engine.preempt("nap interrupted"))
    t0 = time.monotonic()
    first = engine.resume(run_id)
    waker.join()
    assert first.status is RunStatus.PREEMPTED
    assert engine.status(run_id).current_step == "sleep#0"
    engine.token.clear()
    second = engine.resume(run_id)
    elapsed = time.monotonic() - t0
    assert second.output == "rested"
    assert 0.55 < elapsed < 2.0  # the original deadline, not a fresh 0.6 s after resuming
    kinds = [e.event_type for e in engine.history(run_id)]
    assert kinds.count("TimerStarted") == 1
    assert kinds.count("TimerFired") == 1


def test_a_sleep_replaced_by_a_step_is_a_divergence(engine: Engine) -> None:
    run_id = engine.start(napper, {"seconds": 30})
    waker = call_when(lambda: _asleep(engine, run_id), lambda: engine.preempt("before waking"))
    assert engine.resume(run_id).status is RunStatus.PREEMPTED
    waker.join()
    engine.token.clear()
    assert list(engine.store.load(run_id).steps) == ["sleep#0"]
    engine.register(_napper_v2)
    with pytest.raises(NonDeterminismError, match="sleep#0"):
        engine.resume(run_id)


@workflow("napper")
def _napper_v2(seconds: float = 0.3) -> str:
    square(1, 0.0)
    return "rested"
