"""The views against real workflows run by the engine, and how the projector meets bad events."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from eventsourcing.persistence import StoredEvent, Tracking
from projection_histories import open_store, random_runs, view_rows

from engine import Engine, NonRetryableError, RetryPolicy, RunStatus, step, step_context, workflow
from engine.events import StepStarted
from projections import EventNotProjectableError, Projector, ViewSchemaError, catch_up
from support import call_when

FAST = RetryPolicy(max_attempts=4, initial_interval_s=0.01, backoff=1.0, jitter=0.0)


def _rows(projector: Projector, table: str) -> list[dict[str, Any]]:
    view = next(v for v in projector.views for t in v.bound if t.name == table)
    bound = next(t for t in view.bound if t.name == table)
    with projector.db.transaction() as tx:
        rows = tx.fetch(f"SELECT * FROM {bound.qname}")
    return [dict(zip(bound.spec.column_names, r, strict=True)) for r in rows]


def _run_workflows(engine: Engine) -> dict[str, Any]:
    calls: Counter[str] = Counter()

    @step
    def units(total: int) -> int:
        ctx = step_context()
        start = ctx.last_checkpoint or 0
        for i in range(start, total):
            if i == 3 and ctx.attempt == 1:
                engine.preempt("test stops it")
            ctx.checkpoint(i + 1, done=i + 1, total=total)
        return total

    @step(retry=FAST)
    def flaky() -> str:
        calls["flaky"] += 1
        if calls["flaky"] < 3:
            raise ConnectionError(f"try {calls['flaky']}")
        return "ok"

    @step(retry=FAST)
    def broken() -> None:
        raise NonRetryableError("bad row")

    @workflow("pv-units")
    def with_units(total: int) -> int:
        return units(total)

    @workflow("pv-flaky")
    def with_flaky() -> str:
        return flaky()

    @workflow("pv-broken")
    def with_broken() -> None:
        broken()

    preempted = engine.run(with_units, {"total": 10})
    assert preempted.status is RunStatus.PREEMPTED
    engine.token.clear()
    return {
        "preempted": preempted.run_id,
        "flaky": engine.run(with_flaky, {}).run_id,
        "broken": engine.run(with_broken, {}).run_id,
        "resume": lambda: engine.resume(preempted.run_id),
    }


def test_views_follow_real_workflows(engine: Engine) -> None:
    runs = _run_workflows(engine)
    with Projector(engine.store) as projector:
        projector.catch_up()
        by_id = {str(r["run_id"]): r for r in _rows(projector, "stepstone_view_runs")}
        paused = by_id[str(runs["preempted"])]
        assert (paused["status"], paused["current_step"]) == ("preempted", "units#0")
        assert (paused["progress_done"], paused["progress_total"]) == (4, 10)
        assert (paused["preemptions"], paused["interruptions"]) == (1, 1)

        runs["resume"]()
        assert projector.catch_up() == engine.store.head()
        by_id = {str(r["run_id"]): r for r in _rows(projector, "stepstone_view_runs")}
        for name in ("preempted", "flaky", "broken"):
            row, info = by_id[str(runs[name])], engine.status(runs[name])
            assert row["status"] == info.status.value
            assert row["steps_done"] == info.steps_completed
            assert row["steps_started"] == info.steps_recorded
            assert row["attempts"] == info.attempts
            assert row["finished_at"] is not None
        assert by_id[str(runs["flaky"])]["retries"] == 2
        assert by_id[str(runs["broken"])]["last_error_type"] == "NonRetryableError"
        assert by_id[str(runs["preempted"])]["current_step"] is None

        attempts = sorted(
            (r["step_key"], r["attempt"], r["outcome"])
            for r in _rows(projector, "stepstone_view_step_attempts")
        )
        assert attempts == [
            ("broken#0", 1, "failed"),
            ("flaky#0", 1, "failed"), ("flaky#0", 2, "failed"), ("flaky#0", 3, "completed"),
            ("units#0", 1, "preempted"), ("units#0", 2, "completed"),
        ]
        assert all(r["duration_s"] is not None for r in _rows(
            projector, "stepstone_view_step_attempts"))

        hot = {(r["workflow"], r["step_name"]): r for r in _rows(projector,
               "stepstone_view_hotspots")}
        assert hot[("pv-flaky", "flaky")]["retries"] == 2
        assert hot[("pv-flaky", "flaky")]["failures"] == 2
        assert hot[("pv-units", "units")]["preemptions"] == 1
        assert hot[("pv-units", "units")]["crashes"] == 0

        stats = {r["workflow"]: r for r in _rows(projector, "stepstone_view_workflow_stats")}
        assert (stats["pv-broken"]["runs"], stats["pv-broken"]["failed"]) == (1, 1)
        assert stats["pv-broken"]["duration_p50_s"] is None
        assert stats["pv-units"]["completed"] == 1
        assert stats["pv-units"]["duration_p50_s"] == stats["pv-units"]["duration_p95_s"] > 0
        assert all(r["durations_pending"] == 0 for r in stats.values())
        assert [s.lag for s in projector.status()] == [0] * len(projector.views)


def test_unknown_event_stops_the_views_before_it_and_they_resume_once_known(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store(store_url)
    sims = random_runs(store, 3, 6, seed=1)
    # A StepStarted as a newer release would write it: without the step_name field.
    run = store.load(sims[0].run.id)
    bad = StoredEvent(
        originator_id=run.id, originator_version=run.version + 1,
        topic="engine.events:StepStarted",
        state=b'{"timestamp":"2026-01-01T00:00:09+00:00","worker_id":"w9",'
              b'"step_key":"load#9","attempt":1}',
    )
    store.recorder.insert_events([bad])
    bad_position = store.head()
    random_runs(store, 2, 6, seed=2)
    with Projector(store, batch_size=4) as projector:
        with pytest.raises(EventNotProjectableError) as info:
            projector.catch_up()
        assert info.value.position == bad_position
        assert "engine.events:StepStarted" in str(info.value)
        assert f"position {bad_position}" in str(info.value)
        assert set(projector.positions().values()) == {bad_position - 1}
        with pytest.raises(EventNotProjectableError):  # it does not skip on a second try
            projector.catch_up()

        # The fix: a release whose StepStarted knows how to read the older payload.
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state.setdefault("step_name", state["step_key"].partition("#")[0])

        monkeypatch.setattr(StepStarted, "class_version", 2, raising=False)
        monkeypatch.setattr(StepStarted, "upcast_v1_v2", staticmethod(upcast_v1_v2),
                            raising=False)
        assert projector.catch_up() == store.head()
        rows = view_rows(projector)
        projector.rebuild()
        assert view_rows(projector) == rows
    store.close()


def test_unknown_event_type_is_named(store_url: str) -> None:
    store = open_store(store_url)
    random_runs(store, 1, 3, seed=3)
    run_id = store.recorder.select_notifications(None, 1)[0].originator_id
    store.recorder.insert_events([StoredEvent(
        originator_id=run_id, originator_version=99,
        topic="engine.events:StepTeleported", state=b"{}",
    )])
    with Projector(store) as projector, pytest.raises(EventNotProjectableError) as info:
        projector.catch_up()
    assert "StepTeleported" in str(info.value)
    assert info.value.position == store.head()
    store.close()


def test_embedding_catch_up_and_the_library_per_event_path(store_url: str) -> None:
    store = open_store(store_url)
    random_runs(store, 10, 15, seed=4)
    assert catch_up(store_url) == store.head()
    with Projector(store) as batched, Projector(store, prefix="pe_view") as per_event:
        # The same views driven one event per transaction through Projection.process_event.
        per_event.ensure_tables()
        for note in store.recorder.select_notifications(None, 10_000):
            event = store.mapper.to_domain_event(note)
            for view in per_event.views:
                view.process_event(event, Tracking(store.name, note.id))
                view.process_event(event, Tracking(store.name, note.id))  # seen: skipped
        mine, theirs = view_rows(batched), view_rows(per_event)
        assert [mine[t] for t in sorted(mine)] == [theirs[t] for t in sorted(theirs)]
        assert set(per_event.positions().values()) == {store.head()}
    store.close()


def test_a_dropped_view_is_replayed_and_a_foreign_one_refused(store_url: str) -> None:
    store = open_store(store_url)
    random_runs(store, 8, 10, seed=5)
    with Projector(store) as projector:
        projector.catch_up()
        before = view_rows(projector)
        runs = projector.views[0].bound[0].qname
        with projector.db.transaction() as tx:
            tx.execute(f"DROP TABLE {runs}")
    with Projector(store) as projector:
        projector.catch_up()
        assert view_rows(projector) == before
        with projector.db.transaction() as tx:
            tx.execute(f"ALTER TABLE {runs} ADD COLUMN colour TEXT")
    with Projector(store) as projector:
        with pytest.raises(ViewSchemaError, match="rebuild runs"):
            projector.catch_up()
        projector.rebuild("runs")
        projector.catch_up()
        assert view_rows(projector) == before
    store.close()


def test_a_failed_batch_keeps_nothing_and_the_next_one_starts_over(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from projections.hotspots import HotspotsView

    store = open_store(store_url)
    with Projector(store, batch_size=7) as projector:
        for seed in range(6):  # enough batches for the driver to prepare its statements
            random_runs(store, 3, 8, seed=40 + seed)
            projector.catch_up()
        before = projector.positions()
        random_runs(store, 5, 8, seed=50)
        original = HotspotsView.apply

        def failing(self: HotspotsView, *args: Any) -> None:
            original(self, *args)
            raise RuntimeError("the disk is on fire")

        monkeypatch.setattr(HotspotsView, "apply", failing)
        with pytest.raises(RuntimeError, match="on fire"):
            projector.catch_up()
        assert projector.positions() == before  # one transaction for every view: all undone
        monkeypatch.setattr(HotspotsView, "apply", original)
        assert projector.catch_up() == store.head()
        rows = view_rows(projector)
        projector.rebuild()
        assert view_rows(projector) == rows
    store.close()


def test_views_follow_sleeps_and_fan_outs(engine: Engine) -> None:

    from engine import gather, sleep

    @step
    def part(i: int) -> int:
        return i + 1

    @workflow("pv-nap")
    def nap(seconds: float) -> int:
        first = part(0)
        sleep(seconds)
        return first + sum(gather([part.bind(i) for i in range(4)], limit=2))

    waiting = engine.start(nap, {"seconds": 30})
    waker = call_when(lambda: any(h.event_type == "TimerStarted"
                                  for h in engine.history(waiting)),
                      lambda: engine.preempt("stop while asleep"))
    assert engine.resume(waiting).status is RunStatus.PREEMPTED
    waker.join()
    engine.token.clear()
    done = engine.run(nap, {"seconds": 0.01}).run_id
    with Projector(engine.store) as projector:
        projector.catch_up()
        by_id = {str(r["run_id"]): r for r in _rows(projector, "stepstone_view_runs")}
        asleep = by_id[str(waiting)]
        assert (asleep["current_step"], asleep["current_step_status"]) == ("sleep#0", "waiting")
        for run_id in (waiting, done):
            row, info = by_id[str(run_id)], engine.status(run_id)
            assert row["status"] == info.status.value
            assert row["steps_done"] == info.steps_completed
            assert row["steps_started"] == info.steps_recorded
            assert row["attempts"] == info.attempts
        assert by_id[str(done)]["steps_done"] == 6  # part#0, sleep#0, four branches
        assert engine.result(done) == 1 + (1 + 2 + 3 + 4)
