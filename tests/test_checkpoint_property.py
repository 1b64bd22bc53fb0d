"""Property: whatever happens between the drives of a run (interruptions at any checkpoint,
the input file rewritten, the step's checkpoint version bumped, rows lost downstream), the run
ends with the output of a clean run over the input it finally read, or fails with a recorded
`CheckpointRejectedError` that names why, and only when the step's policy says `fail`.

Interruptions are preemptions in process (the kill -9 cases are in test_checkpoint_crash.py);
what is checked is the resume's decision, which is the same whichever way the drive ended.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import checkpointwf
from engine import Engine, RunStatus, Settings, run_id_for_key
from engine import events as ev
from support import Ledger

values = st.lists(st.integers(-1000, 1000), min_size=1, max_size=30)
operations = st.lists(st.one_of(
    st.tuples(st.just("interrupt"), st.integers(1, 4)),
    st.tuples(st.just("rewrite"), values),
    st.tuples(st.just("bump"), st.just(0)),
    st.tuples(st.just("lose"), st.integers(1, 6)),
), max_size=8)
policies = st.fixed_dictionaries({
    "on_source_change": st.sampled_from(["restart", "fail"]),
    "version_change": st.sampled_from(["upgrade", "restart", "fail"]),
    "verify": st.booleans(),
    "on_missing_effects": st.sampled_from(["fallback", "restart", "fail"]),
})


@pytest.fixture
def engine_and_ledger(store_url: str, tmp_path: Path) -> Iterator[tuple[Engine, Ledger]]:
    db = store_url if store_url.startswith("postgres") else str(tmp_path / "ledger.db")
    led = Ledger(db)
    led.execute("CREATE TABLE IF NOT EXISTS cp_rows (key TEXT PRIMARY KEY, value INTEGER)")
    with Engine(Settings(database_url=store_url)) as engine:
        try:
            yield engine, led
        finally:
            led.close()
            checkpointwf.close_ledgers()


def workflow_for(policy: dict[str, Any], version: int) -> Any:
    change = policy["version_change"]
    return checkpointwf.make(
        version=version, upgrade=change == "upgrade",
        on_version_change="restart" if change == "upgrade" else change,
        on_source_change=policy["on_source_change"], verify=policy["verify"],
        on_missing_effects=policy["on_missing_effects"], content=True,
    )


def drive(engine: Engine, wf: Any, given_: dict[str, Any], key: str, at: int | None) -> Any:
    checkpointwf.HOOK.update(engine=engine if at else None, preempt_at=at, seen=0)
    try:
        return engine.run(wf, given_, key=key)
    finally:
        checkpointwf.HOOK.update(engine=None, preempt_at=None, seen=0)
        engine.token.clear()


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow])
@given(first=values, ops=operations, policy=policies)
def test_a_run_ends_as_a_clean_run_over_its_final_input_or_says_why_not(
    engine_and_ledger: tuple[Engine, Ledger], tmp_path: Path, first: list[int],
    ops: list[tuple[str, Any]], policy: dict[str, Any],
) -> None:
    engine, led = engine_and_ledger
    key = f"prop-{uuid.uuid4()}"  # a run of its own per example (not drawn: never shrunk)
    rows_of = f"{run_id_for_key('cp-sum', key)}/%"  # rows are keyed by the operation id
    path = tmp_path / f"{key}.txt"
    path.write_text("".join(f"{v}\n" for v in first))
    current, version = first, 1
    given_ = {"path": str(path), "db": led.db, "chunk": 3, "unit_ms": 0}
    lost_any = False
    result = None
    for op, arg in [*ops, ("finish", None)]:
        if op == "rewrite":
            current = arg
            path.write_text("".join(f"{v}\n" for v in current))
        elif op == "bump":
            version = 2
        elif op == "lose":
            rows = led.execute("SELECT key FROM cp_rows WHERE key LIKE ?", (rows_of,))
            newest = sorted((int(k.rpartition("/")[2]), k) for (k,) in rows)[-arg:]
            for _, k in newest:
                led.execute("DELETE FROM cp_rows WHERE key = ?", (k,))
            lost_any = lost_any or bool(newest)
        else:
            read = current  # what this drive reads, if it finishes the step
            result = drive(engine, workflow_for(policy, version), given_, key,
                           arg if op == "interrupt" else None)
            if result.status is not RunStatus.PREEMPTED:
                break
    assert result is not None
    assert result.status is not RunStatus.PREEMPTED

    history = engine.history(result.run_id)
    checks = [e.fields for e in history if e.kind is ev.CheckpointValidated]
    if result.status is RunStatus.FAILED:
        assert result.error_type == "CheckpointRejectedError"
        [rejected] = [c for c in checks if c["outcome"] == "rejected"]
        assert rejected["reason"]
        why = rejected["reason"]
        assert (("changed" in why and policy["on_source_change"] == "fail")
                or ("missing" in why and policy["on_missing_effects"] == "fail")
                or ("checkpoint_version" in why and policy["version_change"] == "fail"))
        return
    assert result.status is RunStatus.COMPLETED
    assert result.output == {"sum": sum(read), "lines": len(read)}
    if policy["verify"] or not lost_any:
        rows = dict(led.execute("SELECT key, value FROM cp_rows WHERE key LIKE ?",
                                (rows_of,)))
        by_line = {int(k.rpartition("/")[2]): v for k, v in rows.items()}
        assert [by_line.get(i) for i in range(len(read))] == read
