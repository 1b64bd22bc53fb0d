"""Checkpoints validated before a resume trusts them, in process, on both stores.

The run is interrupted by preemption at a chosen checkpoint of `checkpointwf.sum_file`; the
test then changes what the checkpoint relied on (the input file, the step's version, the rows
downstream) and resumes. The crash tests with real processes and SIGKILL are in
test_checkpoint_crash.py; the property test in test_checkpoint_property.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from eventsourcing.persistence import StoredEvent
from eventsourcing.utils import get_topic
from pydantic import BaseModel

import checkpointwf
from engine import (
    CheckpointRejectedError,
    Engine,
    HistoryEntry,
    RunStatus,
    Settings,
    file_fingerprint,
    function_fingerprint,
    step,
    step_context,
    workflow,
)
from engine import events as ev
from engine.fingerprints import MISSING_FILE
from support import Ledger, ledger_path


@pytest.fixture
def ledger_db(store_url: str, tmp_path: Path) -> Iterator[str]:
    try:
        yield ledger_path(store_url, tmp_path)
    finally:
        checkpointwf.close_ledgers()


def write_input(path: Path, values: list[int]) -> None:
    path.write_text("".join(f"{v}\n" for v in values))


def interrupted(engine: Engine, wf: Any, given: dict[str, Any], at: int) -> None:
    """Drive the run until the step's `at`-th checkpoint of this drive, then preempt it."""
    checkpointwf.HOOK.update(engine=engine, preempt_at=at, seen=0)
    try:
        result = engine.run(wf, given, key=checkpointwf.KEY)
    finally:
        checkpointwf.HOOK.update(engine=None, preempt_at=None, seen=0)
        engine.token.clear()
    assert result.status is RunStatus.PREEMPTED


def validations(history: list[HistoryEntry]) -> list[dict[str, Any]]:
    return [e.fields for e in history if e.kind is ev.CheckpointValidated]


@pytest.fixture
def setup(tmp_path: Path, ledger_db: str) -> tuple[Path, dict[str, Any]]:
    path = tmp_path / "input.txt"
    write_input(path, list(range(1, 41)))
    return path, {"path": str(path), "db": ledger_db, "chunk": 5, "unit_ms": 0}


# -- 2. sources ----------------------------------------------------------------------------
@pytest.mark.parametrize("policy", ["restart", "fail", "trust"])
def test_a_changed_input_file_follows_the_step_policy(
    engine: Engine, setup: tuple[Path, dict[str, Any]], policy: str
) -> None:
    path, given = setup
    wf = checkpointwf.make(on_source_change=policy)
    interrupted(engine, wf, given, at=3)  # checkpoints 1..3 committed: offset 15
    new = [v * 10 for v in range(1, 41)]
    write_input(path, new)

    result = engine.run(wf, given, key=checkpointwf.KEY)

    history = engine.history(result.run_id)
    [check] = validations(history)
    assert check["source"]["ref"] == str(path)
    assert check["source_now"] != check["source"]["value"]
    if policy == "restart":
        assert check["outcome"] == "restarted"
        assert check["resumed_from"] == 0
        assert result.output == {"sum": sum(new), "lines": 40}  # a clean run over the new file
    elif policy == "trust":
        assert check["outcome"] == "trusted"
        assert check["resumed_from"] == 3
        assert result.output == {"sum": sum(range(1, 16)) + sum(new[15:]), "lines": 40}
    else:
        assert check["outcome"] == "rejected"
        assert result.status is RunStatus.FAILED
        assert result.error_type == "CheckpointRejectedError"
        assert "changed" in (result.error_message or "")
        assert history[-1].kind is ev.RunFailed
    assert "source file" in next(e.summary for e in history if e.kind is ev.CheckpointValidated)


def test_an_unchanged_source_is_recorded_as_valid(
    engine: Engine, setup: tuple[Path, dict[str, Any]]
) -> None:
    _path, given = setup
    wf = checkpointwf.make()
    interrupted(engine, wf, given, at=2)
    result = engine.run(wf, given, key=checkpointwf.KEY)
    [check] = validations(engine.history(result.run_id))
    assert (check["outcome"], check["resumed_from"], check["reason"]) == ("valid", 2, "")
    assert result.output == {"sum": sum(range(1, 41)), "lines": 40}


# -- 1. versions ---------------------------------------------------------------------------
@pytest.mark.parametrize("bump", ["upgrade", "restart", "fail"])
def test_a_checkpoint_of_another_version(
    engine: Engine, setup: tuple[Path, dict[str, Any]], bump: str
) -> None:
    _, given = setup
    interrupted(engine, checkpointwf.make(), given, at=4)
    v2 = checkpointwf.make(version=2, upgrade=bump == "upgrade", on_version_change=bump)

    result = engine.run(v2, given, key=checkpointwf.KEY)

    history = engine.history(result.run_id)
    [check] = validations(history)
    assert (check["checkpoint_version"], check["step_version"]) == (1, 2)
    expected = {"upgrade": "upgraded", "restart": "restarted", "fail": "rejected"}[bump]
    assert check["outcome"] == expected
    if bump == "fail":
        assert result.status is RunStatus.FAILED
        assert "checkpoint_version 1" in (result.error_message or "")
        return
    assert result.output == {"sum": sum(range(1, 41)), "lines": 40}
    if bump == "upgrade":
        assert check["state"] == {"pos": 20, "sum": sum(range(1, 21))}
    later = [e.fields for e in history if e.kind is ev.StepCheckpointed][-1]
    assert later["version"] == 2


def test_a_newer_version_is_not_downgraded(
    engine: Engine, setup: tuple[Path, dict[str, Any]]
) -> None:
    _, given = setup
    interrupted(engine, checkpointwf.make(version=2), given, at=1)
    result = engine.run(checkpointwf.make(version=1, upgrade=True), given,
                        key=checkpointwf.KEY)
    assert result.status is RunStatus.FAILED
    assert "cannot go back" in (result.error_message or "")


# -- 3. effects ----------------------------------------------------------------------------
@pytest.mark.parametrize("policy", ["fallback", "restart", "fail"])
def test_missing_effects_resume_from_the_last_checkpoint_that_verifies(
    engine: Engine, setup: tuple[Path, dict[str, Any]], ledger_db: str, policy: str
) -> None:
    _, given = setup
    wf = checkpointwf.make(on_missing_effects=policy)
    interrupted(engine, wf, given, at=4)  # rows 0..19 written, checkpoint #4 at offset 20
    led = Ledger(ledger_db)
    try:
        # The downstream store lost the last chunk (rows 15..19) and one row of chunk 3.
        gone = led.execute("SELECT key FROM cp_rows ORDER BY key")
        lost = [k for (k,) in gone if int(k.rpartition("/")[2]) in (12, 15, 16, 17, 18, 19)]
        for key in lost:
            led.execute("DELETE FROM cp_rows WHERE key = ?", (key,))

        result = engine.run(wf, given, key=checkpointwf.KEY)

        [check] = validations(engine.history(result.run_id))
        assert check["missing_count"] == len(lost)
        assert sorted(check["missing"]) == sorted(lost)
        if policy == "fail":
            assert check["outcome"] == "rejected"
            assert result.status is RunStatus.FAILED
            return
        if policy == "fallback":
            assert (check["outcome"], check["resumed_from"]) == ("fell_back", 2)
            assert check["state"] == {"offset": 10, "total": sum(range(1, 11))}
        else:
            assert (check["outcome"], check["resumed_from"]) == ("restarted", 0)
        assert result.output == {"sum": sum(range(1, 41)), "lines": 40}
        rows = led.execute("SELECT key, value FROM cp_rows")
        assert sorted(int(k.rpartition("/")[2]) for k, _ in rows) == list(range(40))
        starts = [s for (s,) in led.execute("SELECT start FROM cp_starts ORDER BY attempt")]
        assert starts == [0, 10 if policy == "fallback" else 0]
    finally:
        led.close()


def test_a_second_fallback_checks_only_the_checkpoints_still_in_line(
    engine: Engine, setup: tuple[Path, dict[str, Any]], ledger_db: str
) -> None:
    """After a fallback, the dropped checkpoints' effects are not asked for again."""
    _, given = setup
    wf = checkpointwf.make()
    interrupted(engine, wf, given, at=4)
    led = Ledger(ledger_db)
    try:
        led.execute("DELETE FROM cp_rows WHERE key LIKE ?", ("%/19",))
        interrupted(engine, wf, given, at=1)  # fell back to #3, then wrote #5 (offset 20)
        led.execute("DELETE FROM cp_rows WHERE key LIKE ?", ("%/19",))
        result = engine.run(wf, given, key=checkpointwf.KEY)
        first, second = validations(engine.history(result.run_id))
        assert (first["outcome"], first["resumed_from"]) == ("fell_back", 3)
        assert (second["outcome"], second["resumed_from"], second["sequence"]) == (
            "fell_back", 3, 5)
        assert result.output == {"sum": sum(range(1, 41)), "lines": 40}
    finally:
        led.close()


# -- the log: old payloads, plain checkpoints, throttling, the views ------------------------
def test_a_plain_checkpoint_is_stored_as_before_and_old_ones_decode(engine: Engine) -> None:
    @step
    def count() -> int:
        step_context().checkpoint({"i": 1}, done=1, total=2)
        return 1

    @workflow("plain-cp")
    def plain() -> int:
        return count()

    run_id = engine.run(plain, {}).run_id
    [cp] = [e for e in engine.history(run_id) if e.kind is ev.StepCheckpointed]
    row = next(r for r in engine.store.reader.iter_run(run_id) if r.version == cp.version)
    assert set(orjson.loads(row.state)) == {
        "timestamp", "worker_id", "prev_hash", "hash", "step_key", "attempt", "sequence",
        "state", "progress_done", "progress_total"}
    # A payload written before versioned checkpoints: the defaults say what it meant.
    old = {"timestamp": datetime.now(UTC).isoformat(), "worker_id": "w", "step_key": "a#0",
           "attempt": 1, "sequence": 3, "state": {"offset": 9}}
    event = engine.store.mapper.to_domain_event(StoredEvent(
        originator_id=uuid.uuid4(), originator_version=3,
        topic=get_topic(ev.StepCheckpointed), state=orjson.dumps(old)))
    assert (event.version, event.source, event.effects) == (1, None, ())


def test_throttled_checkpoints_keep_their_effects(
    store_url: str, setup: tuple[Path, dict[str, Any]]
) -> None:
    _, given = setup
    settings = Settings(database_url=store_url, checkpoint_min_interval_s=3600.0)
    with Engine(settings) as engine:
        interrupted(engine, checkpointwf.make(), given, at=4)
        history = engine.history(engine.runs()[0].run_id)
    saved = [e.fields for e in history if e.kind is ev.StepCheckpointed]
    # Held checkpoints are replaced by later ones; the one committed carries all their keys.
    assert len(saved) < 4
    keys = [k for f in saved for k in f["effects"]]
    assert [int(k.rpartition("/")[2]) for k in keys] == list(range(20))


# -- fingerprints --------------------------------------------------------------------------
class _Marker(BaseModel):
    n: int


def max_id(table: str) -> int:
    return {"orders": 42}[table]


def test_fingerprints_compute_again_the_same_way(tmp_path: Path) -> None:
    f = tmp_path / "data.csv"
    f.write_text("a\n")
    stat, content = file_fingerprint(f), file_fingerprint(f, content=True)
    assert stat.current() == stat.value
    assert content.current() == content.value
    f.write_text("b\n")  # same size; the mtime moves, and the bytes differ
    assert content.current() != content.value
    f.unlink()
    assert stat.current() == MISSING_FILE
    fn = function_fingerprint(max_id, "orders")
    assert (fn.ref, fn.args, fn.value, fn.current()) == (
        f"{__name__}:max_id", ["orders"], "42", "42")
    with pytest.raises(ValueError, match="module-level function"):
        function_fingerprint(lambda: 1)
    with pytest.raises(ValueError, match="JSON values"):
        function_fingerprint(max_id, _Marker(n=1))


def test_bad_policies_are_refused_when_declared() -> None:
    with pytest.raises(ValueError, match="on_source_change"):
        step(on_source_change="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="checkpoint_version=0"):
        step(checkpoint_version=0)
    assert issubclass(CheckpointRejectedError, Exception)


def test_history_shows_versions_sources_and_outcomes(
    store_url: str, setup: tuple[Path, dict[str, Any]]
) -> None:
    from click.testing import CliRunner

    from stepstone.cli import main

    path, given = setup
    with Engine(Settings(database_url=store_url)) as engine:
        interrupted(engine, checkpointwf.make(version=2), given, at=2)
        write_input(path, [1] * 40)
        run_id = engine.run(checkpointwf.make(version=2), given, key=checkpointwf.KEY).run_id
    out = CliRunner().invoke(main, ["history", str(run_id), "--db", store_url],
                             catch_exceptions=False).output
    assert "checkpoint #2 v2 source file size=" in out
    assert "CheckpointValidated" in out
    assert f"checkpoint #2 restarted: source file {path} changed" in out
