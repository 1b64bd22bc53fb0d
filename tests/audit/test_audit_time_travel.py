"""Time travel: the state at every version is the one the engine had when it wrote it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from uuid import UUID

import orjson
import pytest
from click.testing import CliRunner

from engine import Engine, RetryPolicy, Settings, step, step_context, workflow
from engine.aggregate import RunState, WorkflowRun
from engine.time_travel import NoSuchPointError, describe, state_at, version_at
from stepstone.cli import main

flaky_calls = {"n": 0}


@step
def count(n: int) -> int:
    ctx = step_context()
    start = ctx.last_checkpoint or 0
    for i in range(start, n):
        ctx.checkpoint(i + 1, done=i + 1, total=n)
    return n


@step(retry=RetryPolicy(max_attempts=3, initial_interval_s=0.0, jitter=0.0))
def flaky() -> str:
    flaky_calls["n"] += 1
    if flaky_calls["n"] == 1:
        raise ConnectionError("first call fails")
    return "ok"


@workflow("audit-travel")
def travel(n: int) -> dict[str, Any]:
    return {"counted": count(n), "flaky": flaky(), "again": count(n + 1)}


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[tuple[UUID, int], RunState]]:
    """The run's state right after each event the engine records (not on loads)."""
    states: dict[tuple[UUID, int], RunState] = {}
    trigger, start = WorkflowRun._trigger, WorkflowRun.start.__func__  # type: ignore[attr-defined]

    def recording(self: WorkflowRun, *args: Any, **kwargs: Any) -> None:
        trigger(self, *args, **kwargs)
        states[(self.id, self.version)] = self.state.model_copy(deep=True)

    def starting(cls: type[WorkflowRun], run_id: UUID, **fields: Any) -> WorkflowRun:
        run: WorkflowRun = start(cls, run_id, **fields)
        states[(run.id, run.version)] = run.state.model_copy(deep=True)
        return run

    monkeypatch.setattr(WorkflowRun, "_trigger", recording)
    monkeypatch.setattr(WorkflowRun, "start", classmethod(starting))
    return states


def test_replay_at_every_version_is_the_state_the_engine_wrote(
    store_url: str, captured: dict[tuple[UUID, int], RunState]
) -> None:
    flaky_calls["n"] = 0
    with Engine(Settings(database_url=store_url, snapshot_interval=5)) as engine:
        run_id = engine.run(travel, {"n": 3}).run_id
        last = engine.store.load(run_id).version
        assert sorted(v for (r, v) in captured if r == run_id) == list(range(1, last + 1))
        assert engine.store.snapshots is not None
        assert list(engine.store.snapshots.get(run_id))  # the snapshot path is exercised
        for version in range(1, last + 1):
            past = state_at(engine.store, run_id, version=version)
            assert past.version == version
            assert past.state == captured[(run_id, version)], f"version {version}"
        with pytest.raises(NoSuchPointError, match=f"versions 1 to {last}"):
            state_at(engine.store, run_id, version=last + 1)


def test_replay_at_a_time_and_the_command(store_url: str) -> None:
    flaky_calls["n"] = 0
    with Engine.from_url(store_url) as engine:
        run_id = engine.run(travel, {"n": 2}).run_id
        events = [e for _, e in engine.store.events_with_positions(run_id)]
    failed = next(e for e in events if type(e).__name__ == "StepFailed")
    with Engine.from_url(store_url) as engine:
        version = version_at(engine.store, run_id, failed.timestamp)
        assert version >= failed.originator_version
        snap = describe(state_at(engine.store, run_id, version=failed.originator_version))
        with pytest.raises(NoSuchPointError, match="started at"):
            version_at(engine.store, run_id, events[0].timestamp - timedelta(seconds=1))
    assert snap.done == ["count#0"]
    assert [r["step"] for r in snap.retry_pending] == ["flaky#0"]
    assert snap.last_checkpoint == {"step": "count#0", "sequence": 2, "state": 2}

    out = CliRunner().invoke(main, ["replay", str(run_id), "--at",
                                    str(failed.originator_version), "--db", store_url, "--json"])
    assert out.exit_code == 0, out.output
    doc = orjson.loads(out.stdout)
    assert doc["version"] == failed.originator_version
    assert doc["status"] == "running"
    assert doc["retry_pending"][0]["step"] == "flaky#0"
    at = events[2].timestamp.isoformat().replace("+00:00", "Z")
    out = CliRunner().invoke(main, ["replay", str(run_id), "--at", at, "--db", store_url])
    assert out.exit_code == 0, out.output
    assert "status" in out.stdout
    naive = CliRunner().invoke(main, ["replay", str(run_id), "--at", "2026-01-01T00:00:00",
                                      "--db", store_url])
    assert naive.exit_code == 2
    assert "time zone" in naive.stderr
