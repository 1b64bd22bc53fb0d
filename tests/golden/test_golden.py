"""Golden logs: what each release wrote must replay, the same, in every later release.

Each directory here holds a log (`stepstone export` format) and what the release that wrote
it read back from it. r1 was written by the release before hash chains and forks (its
RunStarted events are class version 1, upcast on read); r2 by the release that added them;
r3 by the release that added checkpoints a resume validates (checkpoints with a version, a
source and effects, and `CheckpointValidated` events that fell back and restarted); r4 by the
release that added messages, published values and child workflows (MessageAwaited,
MessageReceived, ValuePublished, ChildStarted, ChildFinished), cancels and deadlines
(RunCancelled with who and when, RunTimedOut).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from uuid import UUID

import orjson
import pytest

from engine import Engine, UnknownEventError, load_workflow
from engine.audit.export import import_records, read_export, read_records
from engine.audit.replay_check import check_run
from engine.audit.verify import verify
from engine.events import RunStarted

GOLDEN = Path(__file__).parent
RELEASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "log.jsonl").exists())


def _load(engine: Engine, release: str) -> dict[str, Any]:
    import_records(engine.store, read_records(GOLDEN / release / "log.jsonl"))
    expected: dict[str, Any] = orjson.loads((GOLDEN / release / "expected.json").read_bytes())
    return expected


def test_every_release_is_here() -> None:
    assert RELEASES[:4] == ["r1", "r2", "r3", "r4"]


def test_the_newest_golden_log_holds_every_event_type() -> None:
    """The last release's log has one of each event this code writes, so each one's stored
    form is held against every later release."""
    from engine.events import EVENT_TYPES

    kinds = {r["type"] for r in read_records(GOLDEN / RELEASES[-1] / "log.jsonl")}
    assert {c.__name__ for c in EVENT_TYPES} <= kinds


@pytest.mark.parametrize("release", RELEASES)
def test_golden_logs_replay_to_the_same_state(engine: Engine, release: str) -> None:
    expected = _load(engine, release)
    for run_id, want in expected.items():
        run = engine.store.load(UUID(run_id))
        got = run.state.model_dump(mode="json")
        assert run.state.status.value == want["status"], want["label"]
        assert run.version == want["version"]
        assert run.state.output == want["output"]
        assert {k: s.status.value for k, s in run.state.steps.items()} == want["steps"]
        # Fields a later release adds are not in `want`; every field that was must read same.
        assert {k: got[k] for k in want["state"]} == want["state"], want["label"]
        # The code still replays each golden history without diverging.
        result = check_run(run, load_workflow(run.state.entrypoint))
        assert result.ok, f"{want['label']}: {result.message}"


@pytest.mark.parametrize("release", RELEASES)
def test_golden_hash_chains(engine: Engine, release: str) -> None:
    expected = _load(engine, release)
    report = verify(engine.store)
    assert report.ok, report.first
    chained = release != "r1"  # r1 predates hash chains: nothing to check, nothing wrong
    assert set(report.unchained) == (set() if chained else {UUID(r) for r in expected})


def test_a_version_1_run_started_is_upcast() -> None:
    records = read_records(GOLDEN / "r1" / "log.jsonl")
    raw = next(r for r in records if r["type"] == "RunStarted")
    assert "class_version" not in raw["event"]
    assert "parent_run_id" not in raw["event"]
    runs = read_export(records)
    started = runs[UUID(raw["run_id"])][0]
    assert isinstance(started, RunStarted)
    assert (started.parent_run_id, started.forked_from_step) == (None, None)
    assert started.workflow == raw["event"]["workflow"]
    assert RunStarted.class_version == 2


def test_an_unknown_event_type_is_named_and_nothing_is_written(engine: Engine) -> None:
    expected = _load(engine, "r2")
    run_id, want = next((UUID(r), w) for r, w in expected.items()
                        if w["label"] == "preempted-then-resumed")
    import_records(engine.store, [{
        "position": 0, "run_id": str(run_id), "version": want["version"] + 1,
        "topic": "engine.events:RunTeleported",
        "event": {"timestamp": "2030-01-01T00:00:00+00:00", "worker_id": "w", "to": "mars"},
    }])
    head = engine.store.head()
    with pytest.raises(UnknownEventError, match="RunTeleported") as info:
        engine.store.load(run_id)
    assert info.value.version == want["version"] + 1
    assert str(want["version"] + 1) in str(info.value)
    with pytest.raises(UnknownEventError, match="RunTeleported"):
        engine.resume(run_id)
    assert engine.store.head() == head
    assert verify(engine.store, run_id).first is not None  # not chained either
