"""Fork: reuse the recorded outputs before STEP, run STEP on with the current code."""

from __future__ import annotations

from collections import Counter
from typing import Any
from uuid import UUID

import orjson
import pytest
from click.testing import CliRunner
from test_audit_replay_check import runs_row

from engine import Engine, NonRetryableError, RunStatus, step, workflow
from engine.audit.fork import ForkError, fork_run
from engine.audit.verify import verify
from projections import Projector
from stepstone.cli import main

calls: Counter[str] = Counter()
BROKEN = {"on": True}


@step
def fetch(n: int) -> list[int]:
    calls["fetch"] += 1
    return list(range(n))


@step
def scale(xs: list[int]) -> list[int]:
    calls["scale"] += 1
    if BROKEN["on"]:
        raise NonRetryableError("scale is broken in this release")
    return [x * 10 for x in xs]


@step
def total(xs: list[int]) -> int:
    calls["total"] += 1
    return sum(xs)


@workflow("audit-fork")
def pipeline(n: int) -> dict[str, Any]:
    xs = fetch(n)
    return {"n": len(xs), "total": total(scale(xs))}


def test_fork_runs_only_from_the_step_and_equals_a_fresh_run(engine: Engine,
                                                              store_url: str) -> None:
    BROKEN["on"] = True
    failed = engine.run(pipeline, {"n": 4})
    assert failed.status is RunStatus.FAILED
    BROKEN["on"] = False  # the fix is deployed

    before = calls.copy()
    fork_id = fork_run(engine, failed.run_id, "scale")
    forked = engine.resume(fork_id)
    assert calls - before == Counter({"scale": 1, "total": 1})  # fetch was reused
    fresh = engine.run(pipeline, {"n": 4})
    assert forked.status is fresh.status is RunStatus.COMPLETED
    assert forked.output == fresh.output == {"n": 4, "total": 60}

    run = engine.store.load(fork_id)
    assert (run.state.parent_run_id, run.state.forked_from_step) == (failed.run_id, "scale#0")
    log = engine.history(fork_id)
    assert log[1].event_type == "StepReused"
    assert log[1].fields["reused_from"] == str(failed.run_id)
    assert log[1].fields["output"] == [0, 1, 2, 3]
    assert engine.status(failed.run_id).status is RunStatus.FAILED  # the parent is untouched
    assert verify(engine.store).ok
    with Projector(store_url) as projector:
        projector.catch_up()
        row = runs_row(projector, fork_id)
    info = engine.status(fork_id)
    assert (row["status"], row["steps_done"], row["steps_started"]) == (
        "completed", info.steps_completed, info.steps_recorded)


def test_fork_errors_and_the_command(engine: Engine, store_url: str) -> None:
    BROKEN["on"] = False
    done = engine.run(pipeline, {"n": 2}).run_id
    with pytest.raises(ForkError, match="fetch#0, scale#0, total#0"):
        fork_run(engine, done, "nope")
    before = engine.store.head()
    out = CliRunner().invoke(main, ["fork", str(done), "--from", "total#0", "--db", store_url,
                                    "--json"])
    assert out.exit_code == 0, out.output
    doc = orjson.loads(out.stdout)
    assert doc["status"] == "completed"
    assert doc["output"] == {"n": 2, "total": 10}
    assert engine.status(UUID(doc["run_id"])).steps_completed == 3
    bad = CliRunner().invoke(main, ["fork", str(done), "--from", "nope", "--db", store_url])
    assert bad.exit_code == 2
    assert "recorded no step 'nope'" in bad.stderr
    assert engine.store.head() > before
