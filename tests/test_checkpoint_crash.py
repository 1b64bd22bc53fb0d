"""Checkpoint validation across real crashes: a runner process is SIGKILLed mid-step, what its
checkpoint relied on is changed (the input file, the step's version, rows downstream), and a
new process resumes the run. Both stores; the runner is `checkpointwf.main`."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

import checkpointwf
from crashkit import Procs, check_history
from engine import Engine, HistoryEntry, RunStatus, Settings, run_id_for_key
from engine import events as ev
from support import Ledger, ledger_path, wait_until

LINES = 60
RUN_ID = run_id_for_key("cp-sum", checkpointwf.KEY)


@pytest.fixture
def ledger_db(store_url: str, tmp_path: Path) -> Iterator[str]:
    try:
        yield ledger_path(store_url, tmp_path)
    finally:
        checkpointwf.close_ledgers()


@pytest.fixture
def given(tmp_path: Path, ledger_db: str) -> dict[str, Any]:
    path = tmp_path / "input.txt"
    path.write_text("".join(f"{v}\n" for v in range(1, LINES + 1)))
    # 30 chunks of 2 lines, 25 ms each: the kill after checkpoint 3 lands mid-step.
    return {"path": str(path), "db": ledger_db, "chunk": 2, "unit_ms": 25}


def runner(store_url: str, options: dict[str, Any], given: dict[str, Any]) -> list[str]:
    return [sys.executable, "-c", checkpointwf.RUNNER_CODE, store_url,
            orjson.dumps(options).decode(), orjson.dumps(given).decode()]


def checkpoints(engine: Engine) -> list[dict[str, Any]]:
    try:
        history = engine.history(RUN_ID)
    except Exception:  # not started yet
        return []
    return [e.fields for e in history if e.kind is ev.StepCheckpointed]


def kill_after_checkpoint(procs: Procs, engine: Engine, store_url: str,
                          options: dict[str, Any], given: dict[str, Any], k: int = 3) -> int:
    """Run the workflow in a child, SIGKILL it once `k` checkpoints are in the log; the
    offset of the last checkpoint committed."""
    proc = procs.spawn(runner(store_url, options, given))
    wait_until(lambda: proc.poll() is not None or len(checkpoints(engine)) >= k,
               f"checkpoint {k} in the log")
    assert procs.sigkill(proc), "the runner ended before the kill: " + "\n".join(
        procs.output(proc))
    return int(checkpoints(engine)[-1]["state"]["offset"])


def resume(procs: Procs, store_url: str, options: dict[str, Any],
           given: dict[str, Any]) -> int:
    proc = procs.spawn(runner(store_url, options, given))
    return procs.finish(proc)


def only_validation(history: list[HistoryEntry]) -> dict[str, Any]:
    [check] = [e.fields for e in history if e.kind is ev.CheckpointValidated]
    return check


# `fail` and a version bump without upgrade are also covered in process (test_checkpoints.py).
@pytest.mark.parametrize("policy", ["restart", "trust",
                                    pytest.param("fail", marks=pytest.mark.slow)])
def test_kill9_then_a_changed_input_file(
    engine: Engine, store_url: str, procs: Procs, given: dict[str, Any], tmp_path: Path,
    policy: str,
) -> None:
    options = {"on_source_change": policy}
    offset = kill_after_checkpoint(procs, engine, store_url, options, given)
    new = [v * 3 for v in range(LINES)]
    Path(given["path"]).write_text("".join(f"{v}\n" for v in new))

    rc = resume(procs, store_url, options, given)

    history = engine.history(RUN_ID)
    check = only_validation(history)
    if policy == "fail":
        assert rc == 1
        assert check["outcome"] == "rejected"
        check_history(history, ["sum_file#0"], ["StepFailed", "RunFailed"])
        assert history[-1].fields["error_type"] == "CheckpointRejectedError"
        return
    assert rc == 0, "\n".join(procs.output(procs.started[-1]))
    check_history(history, ["sum_file#0"], ["StepCompleted", "RunCompleted"])
    if policy == "trust":  # resumes as it always did: the old prefix, the new rest
        assert check["outcome"] == "trusted"
        assert engine.result(RUN_ID) == {"sum": sum(range(1, offset + 1)) + sum(new[offset:]),
                                         "lines": LINES}
        return
    assert check["outcome"] == "restarted"
    with Engine(Settings(database_url=f"sqlite:///{tmp_path / 'clean.db'}")) as clean:
        clean_given = {**given, "db": str(tmp_path / "clean-ledger.db"), "unit_ms": 0}
        reference = clean.run(checkpointwf.make(), clean_given, key="clean").output
    assert engine.result(RUN_ID) == reference == {"sum": sum(new), "lines": LINES}


@pytest.mark.parametrize("upgrade", [
    pytest.param(True, id="upgrade"),
    pytest.param(False, id="restart", marks=pytest.mark.slow),
])
def test_kill9_across_a_checkpoint_version_bump(
    engine: Engine, store_url: str, procs: Procs, given: dict[str, Any], ledger_db: str,
    upgrade: bool,
) -> None:
    offset = kill_after_checkpoint(procs, engine, store_url, {"version": 1}, given)
    rc = resume(procs, store_url, {"version": 2, "upgrade": upgrade}, given)
    assert rc == 0, "\n".join(procs.output(procs.started[-1]))

    history = engine.history(RUN_ID)
    check = only_validation(history)
    assert (check["checkpoint_version"], check["step_version"]) == (1, 2)
    assert engine.result(RUN_ID) == {"sum": sum(range(1, LINES + 1)), "lines": LINES}
    led = Ledger(ledger_db)
    try:
        starts = [s for (s,) in led.execute("SELECT start FROM cp_starts ORDER BY attempt")]
    finally:
        led.close()
    if upgrade:
        assert check["outcome"] == "upgraded"
        assert check["state"] == {"pos": offset, "sum": sum(range(1, offset + 1))}
        assert starts == [0, offset]
    else:
        assert check["outcome"] == "restarted"
        assert starts == [0, 0]


def test_kill9_then_the_last_chunk_lost_downstream(
    engine: Engine, store_url: str, procs: Procs, given: dict[str, Any], ledger_db: str,
) -> None:
    kill_after_checkpoint(procs, engine, store_url, {}, given, k=4)
    *_, before, last = checkpoints(engine)
    led = Ledger(ledger_db)
    try:
        for key in last["effects"]:
            led.execute("DELETE FROM cp_rows WHERE key = ?", (key,))

        assert resume(procs, store_url, {}, given) == 0

        check = only_validation(engine.history(RUN_ID))
        assert (check["outcome"], check["resumed_from"]) == ("fell_back", before["sequence"])
        assert sorted(check["missing"]) == sorted(last["effects"])
        assert engine.result(RUN_ID) == {"sum": sum(range(1, LINES + 1)), "lines": LINES}
        # Every expected effect is downstream, once, with its value.
        rows = led.execute("SELECT key, value FROM cp_rows")
        assert sorted((int(k.rpartition("/")[2]), v) for k, v in rows) == [
            (i, i + 1) for i in range(LINES)]
        assert engine.status(RUN_ID).status is RunStatus.COMPLETED
    finally:
        led.close()
