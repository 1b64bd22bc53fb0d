"""Resume by replay: completed steps return their record, unfinished ones run again."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from decimal import Decimal
from uuid import UUID

import pytest
from pydantic import BaseModel

from engine import (
    Engine,
    NonDeterminismError,
    RunStatus,
    gather,
    step,
    step_context,
    workflow,
)


class Money(BaseModel):
    amount: Decimal
    currency: str


def test_completed_steps_are_never_run_again(engine: Engine) -> None:
    calls: Counter[str] = Counter()

    @step
    def double(x: int) -> int:
        calls["double"] += 1
        return 2 * x

    @step
    def stop_once(x: int) -> int:
        calls["stop_once"] += 1
        if calls["stop_once"] == 1:
            engine.preempt("test asks to stop")
            step_context().checkpoint({"seen": x})
        return x + 1

    @workflow("replay-basic")
    def flow(n: int) -> int:
        a = double(n)
        b = double(a)
        return stop_once(b)

    first = engine.run(flow, {"n": 3})
    assert first.status is RunStatus.PREEMPTED
    assert calls == {"double": 2, "stop_once": 1}

    engine.token.clear()
    second = engine.resume(first.run_id)
    assert second.status is RunStatus.COMPLETED
    assert second.output == 13
    # Replay returned the recorded doubles; only the unfinished step ran again.
    assert calls == {"double": 2, "stop_once": 2}
    # A finished run is returned as recorded, nothing runs.
    assert engine.resume(first.run_id) == second
    assert calls == {"double": 2, "stop_once": 2}


def test_unfinished_step_resumes_from_its_last_checkpoint(engine: Engine) -> None:
    processed: list[int] = []

    @step
    def units(total: int) -> int:
        ctx = step_context()
        start = ctx.last_checkpoint["next"] if ctx.last_checkpoint else 0
        for i in range(start, total):
            processed.append(i)
            if i == 6 and ctx.attempt == 1:
                engine.preempt("stop in the middle")
            ctx.checkpoint({"next": i + 1}, done=i + 1, total=total)
        return len(processed)

    @workflow("checkpointed")
    def flow(total: int) -> int:
        return units(total)

    first = engine.run(flow, {"total": 10})
    assert first.status is RunStatus.PREEMPTED
    assert processed == list(range(7))
    engine.token.clear()
    assert engine.resume(first.run_id).output == 10
    # Unit 6 was checkpointed before the step unwound, so nothing ran twice.
    assert processed == list(range(10))
    types = [h.event_type for h in engine.history(first.run_id)]
    assert types.count("StepPreempted") == 1
    assert "RunResumed" in types


def _diverging_pair(name: str, engine: Engine) -> tuple[object, object]:
    @step
    def fetch() -> int:
        return 1

    @step
    def load(x: int) -> int:
        return x

    @step
    def pause(x: int) -> int:
        ctx = step_context()
        if ctx.attempt == 1:
            engine.preempt("stop at the checkpoint")
            ctx.checkpoint({"x": x})
        return x

    @workflow(name)
    def original() -> int:
        return pause(load(fetch()))

    @workflow(name)
    def changed() -> int:
        return pause(fetch() + fetch())  # asks for fetch#1 where the log has load#0

    return original, changed


def test_changed_body_is_a_non_determinism_error_and_parks_the_run(
    engine: Engine, store_url: str
) -> None:
    original, changed = _diverging_pair("diverging", engine)
    first = engine.run(original, {})  # type: ignore[arg-type]
    assert first.status is RunStatus.PREEMPTED
    before = engine.history(first.run_id)

    with (
        Engine.from_url(store_url, workflows=[changed]) as other,  # type: ignore[list-item]
        pytest.raises(NonDeterminismError) as info,
    ):
        other.resume(first.run_id)
    assert info.value.expected == "load#0"
    assert info.value.actual == "fetch#1"
    assert "load#0" in str(info.value)
    assert "fetch#1" in str(info.value)
    # Parked: one RunParked event is all that was written (docs/audit.md).
    after = engine.history(first.run_id)
    assert after[:-1] == before
    assert after[-1].event_type == "RunParked"
    assert engine.status(first.run_id).status is RunStatus.PARKED

    engine.token.clear()
    assert engine.resume(first.run_id).status is RunStatus.COMPLETED


def test_dropping_a_recorded_step_is_detected_at_the_end(engine: Engine, store_url: str) -> None:
    @step
    def one() -> int:
        return 1

    @step
    def hold() -> int:
        engine.preempt("stop")
        step_context().checkpoint(None)
        return 2

    @workflow("shrinking")
    def long() -> int:
        return one() + one() + hold()

    @workflow("shrinking")
    def short() -> int:
        return one()

    run_id = engine.run(long, {}).run_id
    with (
        Engine.from_url(store_url, workflows=[short]) as other,
        pytest.raises(NonDeterminismError, match="end of workflow"),
    ):
        other.resume(run_id)


def test_step_values_are_the_recorded_ones_on_first_run_and_replay(engine: Engine) -> None:
    @step
    def when() -> dt.date:
        return dt.date(2026, 1, 2)

    @step
    def untyped() -> object:
        return (1, 2)

    @workflow("typed-values")
    def flow() -> list[str]:
        d = when()
        t = untyped()
        assert isinstance(d, dt.date)
        return [d.isoformat(), type(t).__name__]

    # Tuples are recorded as JSON arrays: the workflow sees a list both times.
    assert engine.run(flow, {}).output == ["2026-01-02", "list"]


def test_typed_step_values_keep_their_types_after_a_preemption_and_replay(
    engine: Engine,
) -> None:
    """Outputs come back as their annotated types from the log, in steps and in a fan-out."""
    @step
    def day() -> dt.date:
        return dt.date(2026, 1, 2)

    @step
    def moment() -> dt.datetime:
        return dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)

    @step
    def price() -> Money:
        return Money(amount=Decimal("12.50"), currency="EUR")

    @step
    def ident(n: int) -> UUID:
        return UUID(int=n)

    @step
    def last() -> int:
        if step_context().attempt == 1:
            engine.preempt("stop before the last step ends")
            step_context().checkpoint(None)
        return 1

    passes: list[list[type]] = []

    @workflow("typed-resume")
    def flow() -> str:
        values = [day(), moment(), price(), *gather([ident.bind(n) for n in (1, 2)])]
        passes.append([type(v) for v in values])
        last()
        return values[2].amount.to_eng_string() if isinstance(values[2], Money) else "?"

    first = engine.run(flow, {})
    assert first.status is RunStatus.PREEMPTED
    engine.token.clear()
    second = engine.resume(first.run_id)
    assert second.status is RunStatus.COMPLETED
    assert second.output == "12.50"
    expected = [dt.date, dt.datetime, Money, UUID, UUID]
    assert passes == [expected, expected]  # the second pass replayed every value from the log


def test_throttled_checkpoints_still_save_the_latest_before_preemption(store_url: str) -> None:
    from engine import Settings

    settings = Settings(database_url=store_url, checkpoint_min_interval_s=60.0)
    with Engine(settings) as throttled:

        @step
        def scan(n: int) -> int:
            ctx = step_context()
            start = ctx.last_checkpoint or 0
            for i in range(start, n):
                if i == 50 and ctx.attempt == 1:
                    throttled.preempt("stop")
                ctx.checkpoint(i + 1)
            return n

        @workflow("throttled")
        def flow(n: int) -> int:
            return scan(n)

        first = throttled.run(flow, {"n": 100})
        assert first.status is RunStatus.PREEMPTED
        cps = [h for h in throttled.history(first.run_id) if h.event_type == "StepCheckpointed"]
        # The first checkpoint is recorded, the next 49 are throttled, and the one asked for
        # when preemption arrived is recorded before the step unwinds.
        assert [c.fields["state"] for c in cps] == [1, 51]
        throttled.token.clear()
        assert throttled.resume(first.run_id).output == 100


def test_a_workflow_cannot_swallow_a_divergence(engine: Engine, store_url: str) -> None:
    @step
    def first() -> int:
        return 1

    @step
    def hold() -> int:
        engine.preempt("stop")
        step_context().checkpoint(None)
        return 2

    @step
    def other() -> int:
        return 3

    @workflow("swallowing")
    def before() -> int:
        return first() + hold()

    @workflow("swallowing")
    def after() -> int:
        try:
            return other() + hold()
        except Exception:  # careless user code
            return -1

    run_id = engine.run(before, {}).run_id
    log = engine.history(run_id)
    with (
        Engine.from_url(store_url, workflows=[after]) as changed,
        pytest.raises(NonDeterminismError, match="'first#0'"),
    ):
        changed.resume(run_id)
    assert engine.history(run_id)[:-1] == log  # parked: RunParked is all that was written
    assert engine.history(run_id)[-1].event_type == "RunParked"
