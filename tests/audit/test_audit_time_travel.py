"""Time travel: the state at every version is the one the engine had when it wrote it."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from engine import Engine, RetryPolicy, Settings, step, step_context, workflow
from engine.audit.time_travel import NoSuchPointError, describe, state_at, version_at
from stepstone.cli import main

flaky_calls = {"n": 0}
# What the step code saw, in order, written by the test's own code as it happens:
# ("start", key) | ("checkpoint", key, state) | ("end", key) | ("fail", key).
journal: list[tuple[Any, ...]] = []


@step
def count(n: int) -> int:
    ctx = step_context()
    journal.append(("start", ctx.step_key))
    start = ctx.last_checkpoint or 0
    for i in range(start, n):
        ctx.checkpoint(i + 1, done=i + 1, total=n)
        journal.append(("checkpoint", ctx.step_key, i + 1))
    journal.append(("end", ctx.step_key))
    return n


@step(retry=RetryPolicy(max_attempts=3, initial_interval_s=0.0, jitter=0.0))
def flaky() -> str:
    ctx = step_context()
    journal.append(("start", ctx.step_key))
    flaky_calls["n"] += 1
    if flaky_calls["n"] == 1:
        journal.append(("fail", ctx.step_key))
        raise ConnectionError("first call fails")
    journal.append(("end", ctx.step_key))
    return "ok"


@workflow("audit-travel")
def travel(n: int) -> dict[str, Any]:
    return {"counted": count(n), "flaky": flaky(), "again": count(n + 1)}


_EVENT_OF = {"start": "StepStarted", "checkpoint": "StepCheckpointed", "end": "StepCompleted",
             "fail": "StepFailed"}


def _expected(prefix: list[tuple[Any, ...]]) -> dict[str, Any]:
    """The state after the journal's first entries, by the journal's own account."""
    steps: dict[str, str] = {}  # key -> running | done | retry_pending, in first-start order
    checkpoints: dict[str, tuple[int, Any]] = {}
    for kind, key, *rest in prefix:
        if kind == "checkpoint":
            sequence = checkpoints.get(key, (0, None))[0] + 1
            checkpoints[key] = (sequence, rest[0])
        else:
            steps[key] = {"start": "running", "end": "done", "fail": "retry_pending"}[kind]
    last = [k for k in steps if k in checkpoints][-1:] or [None]
    return {
        "done": [k for k, v in steps.items() if v == "done"],
        "in_progress": [k for k, v in steps.items() if v == "running"],
        "retry_pending": [k for k, v in steps.items() if v == "retry_pending"],
        "last_checkpoint": None if last[0] is None else {
            "step": last[0], "sequence": checkpoints[last[0]][0],
            "state": checkpoints[last[0]][1]},
    }


def test_replay_at_every_version_is_the_state_the_test_saw_then(store_url: str) -> None:
    flaky_calls["n"] = 0
    journal.clear()
    with Engine(Settings(database_url=store_url, snapshot_interval=5)) as engine:
        run_id = engine.run(travel, {"n": 3}).run_id
        history = engine.history(run_id)
        last = history[-1].version
        assert engine.store.snapshots is not None
        assert list(engine.store.snapshots.get(run_id))  # the snapshot path is exercised
        # Between RunStarted and RunCompleted, one event per journal entry, in its order.
        kinds = [h.event_type for h in history]
        assert kinds == ["RunStarted", *(_EVENT_OF[e[0]] for e in journal), "RunCompleted"]
        for version in range(1, last + 1):
            past = describe(state_at(engine.store, run_id, version=version))
            assert past.version == version
            seen = _expected(journal[: max(0, version - 1)])
            got = {k: getattr(past, k) for k in seen}
            got["retry_pending"] = [r["step"] for r in past.retry_pending]
            assert got == seen, f"version {version}"
            status = "pending" if version == 1 else "completed" if version == last else "running"
            assert past.status == status, f"version {version}"
        assert past.output == {"counted": 3, "flaky": "ok", "again": 4}
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
