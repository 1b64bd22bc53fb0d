"""The log itself: snapshots bound loading, unknown events are named errors, fencing holds."""

from __future__ import annotations

from uuid import uuid4

import pytest
from eventsourcing.persistence import StoredEvent

from engine import (
    Engine,
    RunConflictError,
    RunStatus,
    Settings,
    UnknownEventError,
    step,
    workflow,
)
from engine.aggregate import RunSnapshot
from engine.events import ResumeReason


@step
def noop(i: int) -> int:
    return i


@workflow("many-steps")
def many(n: int) -> int:
    return sum(noop(i) for i in range(n))


def test_snapshots_bound_loading_and_equal_a_full_replay(store_url: str) -> None:
    with Engine(Settings(database_url=store_url, snapshot_interval=25)) as engine:
        result = engine.run(many, {"n": 60})
        assert result.output == sum(range(60))
        run = engine.store.load(result.run_id)
        snapshots = list(engine.store.snapshots.get(result.run_id))  # type: ignore[union-attr]
        versions = [s.originator_version for s in snapshots]
        # One snapshot whenever a save takes the run 25 or more events past the last one.
        assert len(versions) == 4
        assert all(25 <= b - a <= 26 for a, b in zip([0, *versions], versions, strict=False))
        assert all(isinstance(s, RunSnapshot) for s in snapshots)
        # Loading reads only the events after the last snapshot...
        after = list(engine.store.events.get(result.run_id, gt=versions[-1]))
        assert len(after) == run.version - versions[-1] < 26
    # ...and gives exactly the state a full replay gives.
    with Engine(Settings(database_url=store_url, snapshot_interval=0)) as plain:
        full = plain.store.load(result.run_id)
    assert full.state == run.state
    assert full.version == run.version
    mid = engine_state_at(store_url, result.run_id, 60)
    assert mid.version == 60


def engine_state_at(url: str, run_id: object, version: int) -> object:
    with Engine.from_url(url) as engine:
        return engine.store.load(run_id, version=version)  # type: ignore[arg-type]


def test_unknown_event_type_is_a_named_error_and_writes_nothing(engine: Engine) -> None:
    result = engine.run(many, {"n": 1})
    stored = StoredEvent(
        originator_id=result.run_id,
        originator_version=engine.store.load(result.run_id).version + 1,
        topic="engine.events:StepTeleported",
        state=b"{}",
    )
    engine.store.recorder.insert_events([stored])
    head = engine.store.head()
    with pytest.raises(UnknownEventError) as info:
        engine.status(result.run_id)
    assert "engine.events:StepTeleported" in str(info.value)
    assert info.value.version == stored.originator_version
    assert engine.store.head() == head


def test_a_stale_writer_is_fenced_off(engine: Engine) -> None:
    run_id = engine.start(many, {"n": 2})
    mine = engine.store.load(run_id)
    theirs = engine.store.load(run_id)
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    theirs.start_step("noop#0", "noop", 1, at=now, worker="b")
    engine.store.save_run(theirs)
    mine.resume(ResumeReason.CRASH_RECOVERY, at=now, worker="a")
    with pytest.raises(RunConflictError):
        engine.store.save_run(mine)
    history = engine.history(run_id)
    assert [h.worker_id for h in history] == ["test-worker", "b"]
    assert engine.store.load(run_id).status is RunStatus.RUNNING  # as the log says
    # ...though nobody holds its lease: a reader is told it is interrupted.
    assert engine.status(run_id).status is RunStatus.INTERRUPTED


def test_unknown_run_id(engine: Engine) -> None:
    from engine import RunNotFoundError

    with pytest.raises(RunNotFoundError):
        engine.status(uuid4())


def test_sqlite_store_commits_with_synchronous_full(tmp_path: object) -> None:
    with Engine.from_url(f"sqlite:///{tmp_path}/durable.db") as engine:
        engine.run(many, {"n": 1})
        datastore = engine.store.recorder.datastore  # type: ignore[attr-defined]
        with datastore.transaction(commit=False) as cursor:
            cursor.execute("PRAGMA journal_mode")
            assert cursor.fetchone()[0] == "wal"
            cursor.execute("PRAGMA synchronous")
            assert cursor.fetchone()[0] == 2  # FULL
