"""Crash recovery with real processes: SIGKILL, SIGTERM and SIGINT at random points.

A runner subprocess drives the `crashwf.ledger` workflow and gets killed mid-step again and
again (the CLI demo's turn is in test_crash_demo.py); the run must still complete with the
output of an uninterrupted run, every side effect applied exactly once although steps ran more
than once, and a history without gaps. Kill delays come from a seeded RNG, so a failure can be
replayed.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

import crashwf
from crashkit import Procs, check_history
from engine import Engine, HistoryEntry, RunStatus, Settings
from support import Ledger, open_step, wait_until

TESTS_DIR = Path(__file__).parent

# Timings tuned so the runner needs several times longer than all the kill delays together:
# a run that completes before the last planned kill would mean fewer kills than promised.
FAST = {"kills": 4, "steps": 60, "work_ms": 10, "units": 40, "unit_ms": 8, "units_at": 8}
SLOW = {"kills": 24, "steps": 250, "work_ms": 16, "units": 120, "unit_ms": 10, "units_at": 60}


def runner_args(store_url: str, run_id: UUID) -> list[str]:
    return [sys.executable, "-c", crashwf.RUNNER_CODE, store_url, str(run_id)]


# -- the ledger workflow ------------------------------------------------------------------
@pytest.fixture
def ledger_db(store_url: str, tmp_path: Path) -> Iterator[str]:
    """Where the ledger lives: a SQLite file next to a SQLite store, else the store's schema."""
    db = store_url if store_url.startswith("postgres") else str(tmp_path / "ledger.db")
    try:
        yield db
    finally:
        crashwf.close_ledgers()


@pytest.fixture
def ledger(ledger_db: str) -> Iterator[Ledger]:
    """The test's own connection to the ledger, tables created before any runner starts."""
    led = Ledger(ledger_db)
    crashwf.create_tables(led)
    try:
        yield led
    finally:
        led.close()


def workflow_input(db: str, params: dict[str, int]) -> dict[str, Any]:
    keys = ("steps", "work_ms", "units", "unit_ms", "units_at")
    return {"db": db, **{k: params[k] for k in keys}}


def uninterrupted_output(tmp_path: Path, params: dict[str, int]) -> Any:
    """The same workflow run once, in-process, on a fresh store and a fresh ledger."""
    ref = tmp_path / "reference"
    ref.mkdir()
    settings = Settings(database_url=f"sqlite:///{ref / 'store.db'}", worker_id="reference")
    with Engine(settings) as e:
        result = e.run(crashwf.ledger, workflow_input(str(ref / "ledger.db"), params))
    assert result.status is RunStatus.COMPLETED
    return result.output


def expected_values(params: dict[str, int]) -> list[str]:
    """What each posting step must have written, computed without the engine."""
    prev, values = "genesis", []
    for i in range(params["steps"]):
        if i == params["units_at"]:
            prev = crashwf.chain(f"units:{params['units']}", prev)
        prev = crashwf.chain(i, prev)
        values.append(prev)
    return values


def count(led: Ledger, sql: str) -> int:
    return int(led.execute(sql)[0][0] or 0)


def units_done(led: Ledger) -> int:
    return count(led, "SELECT SUM(times) FROM crash_units")


def progress(led: Ledger) -> int:
    """Grows with every step execution and every unit processed, across all processes."""
    return (
        count(led, "SELECT COUNT(*) FROM crash_attempts")
        + count(led, "SELECT COUNT(*) FROM crash_unit_runs")
        + units_done(led)
    )


@dataclass
class Kill:
    delay_s: float
    aimed_at_units: bool
    step: str  # the step in flight, as the log shows it after the kill


def kill_repeatedly(
    procs: Procs,
    engine: Engine,
    run_id: UUID,
    led: Ledger,
    params: dict[str, int],
    rng: random.Random,
) -> list[Kill]:
    """Start the runner and SIGKILL it mid-step, `kills` times (fewer only if it finishes)."""
    kills: list[Kill] = []
    while len(kills) < params["kills"]:
        # Every third kill waits for the checkpointing step (in its first half) to process a
        # unit, then lands within 3 units; the others land 20-250 ms after the runner made
        # progress (a step attempt or a unit), so every kill interrupts step execution.
        aim = len(kills) % 3 == 1 and units_done(led) < params["units"] // 2
        measure = units_done if aim else progress
        before = measure(led)
        # The runner's own first commit too: on PostgreSQL a ledger insert of the runner killed
        # before can still commit after its death, which is progress this runner did not make.
        version = engine.status(run_id).version
        proc = procs.spawn(runner_args(engine.settings.database_url, run_id))
        wait_until(
            lambda m=measure, b=before, v=version, p=proc: p.poll() is not None
            or (m(led) > b and engine.status(run_id).version > v),
            "the runner to process a unit" if aim else "the runner to make progress",
        )
        delay = rng.uniform(0.0, 3 * params["unit_ms"] / 1000) if aim else rng.uniform(0.02, 0.25)
        time.sleep(delay)
        if proc.poll() is not None:  # finished before the kill: fine only if it completed
            out, err = procs.output(proc)
            assert proc.returncode == crashwf.EXIT_COMPLETED, f"runner failed:\n{out}\n{err}"
            break
        if not procs.sigkill(proc):
            break
        step = open_step(engine.history(run_id))
        assert step is not None, f"kill {len(kills) + 1} hit no open step"
        kills.append(Kill(delay, aim, step))
    return kills


def checkpoint_before(entries: list[HistoryEntry], step_key: str, attempt: int) -> int:
    """The unit index of the last checkpoint recorded before `attempt` of `step_key` started."""
    last = 0
    for e in entries:
        if e.event_type == "StepStarted" and e.fields["step_key"] == step_key:
            if e.fields["attempt"] == attempt:
                return last
        elif e.event_type == "StepCheckpointed" and e.fields["step_key"] == step_key:
            last = int(e.fields["state"]["i"])
    raise AssertionError(f"{step_key} attempt {attempt} never started")


# -- kill -9 the ledger runner ------------------------------------------------------------
@pytest.mark.parametrize(
    "params",
    [pytest.param(FAST, id="fast"), pytest.param(SLOW, id="slow", marks=pytest.mark.slow)],
)
def test_sigkill_mid_step_loses_nothing_and_applies_effects_once(
    engine: Engine,
    store_url: str,
    ledger_db: str,
    ledger: Ledger,
    procs: Procs,
    tmp_path: Path,
    params: dict[str, int],
) -> None:
    backend = "postgres" if store_url.startswith("postgres") else "sqlite"
    rng = random.Random(f"sigkill-{backend}-{params['kills']}")
    run_id = engine.start(crashwf.ledger, workflow_input(ledger_db, params), key="crash-ledger")

    kills = kill_repeatedly(procs, engine, run_id, ledger, params, rng)
    final = procs.spawn(runner_args(store_url, run_id))
    rc = procs.finish(final)
    assert rc == crashwf.EXIT_COMPLETED, "\n".join(procs.output(final))
    in_units = [k for k in kills if k.step == "process_units#0"]
    print(f"{backend}: {len(kills)} kills landed, {len(in_units)} in the checkpointing step")
    assert len(kills) == params["kills"], "the run completed before every planned kill"
    assert any(k.aimed_at_units for k in in_units)

    # The run completed with the output of an uninterrupted run.
    assert engine.status(run_id).status is RunStatus.COMPLETED
    assert engine.result(run_id) == uninterrupted_output(tmp_path, params)

    # Effects: every step's effect exactly once, with the value the chain dictates.
    steps = params["steps"]
    effects = ledger.execute(
        "SELECT operation_id, step_index, value FROM crash_effects ORDER BY step_index"
    )
    assert [(op, i) for op, i, _ in effects] == [
        (f"{run_id}/post_entry#{i}", i) for i in range(steps)
    ]
    assert [v for _, _, v in effects] == expected_values(params)

    # Attempts: at least once each, and kills did land mid-step (more attempts than steps).
    per_step = dict(
        ledger.execute("SELECT step_index, COUNT(*) FROM crash_attempts GROUP BY step_index")
    )
    assert sorted(per_step) == list(range(steps))
    unit_runs = dict(ledger.execute("SELECT attempt, start_unit FROM crash_unit_runs"))
    re_executions = sum(per_step.values()) - steps + len(unit_runs) - 1
    print(f"{re_executions} re-executions; attempts per posting step {per_step.values()}")
    assert re_executions >= 1
    assert len(unit_runs) >= 2

    # Units: each processed, at most twice, and a second time only at a resume point.
    entries = engine.history(run_id)
    starts = {a: checkpoint_before(entries, "process_units#0", a) for a in unit_runs}
    assert unit_runs == starts, "an attempt did not resume from its last checkpoint"
    units = dict(ledger.execute("SELECT unit, times FROM crash_units"))
    assert sorted(units) == list(range(params["units"]))
    twice = {u for u, times in units.items() if times > 1}
    print(f"units processed twice: {sorted(twice)}; unit step attempts: {unit_runs}")
    assert all(times <= 2 for times in units.values())
    assert twice <= set(unit_runs.values()), "a unit before a checkpoint was processed again"

    # History: gapless, sequential, and one crash-recovery resume per kill.
    check_history(entries, crashwf.expected_step_keys(steps, params["units_at"]), ["RunCompleted"])
    resumes = [e.fields["reason"] for e in entries if e.event_type == "RunResumed"]
    assert resumes == ["crash_recovery"] * len(kills)


# -- SIGTERM the ledger runner ------------------------------------------------------------
def test_sigterm_preempts_at_a_checkpoint_and_resume_continues_from_it(
    engine: Engine,
    store_url: str,
    ledger_db: str,
    ledger: Ledger,
    procs: Procs,
    tmp_path: Path,
) -> None:
    params = {"steps": 12, "work_ms": 4, "units": 150, "unit_ms": 10, "units_at": 3}
    run_id = engine.start(crashwf.ledger, workflow_input(ledger_db, params), key="sigterm")

    def checkpoints() -> int:
        return sum(1 for e in engine.history(run_id) if e.event_type == "StepCheckpointed")

    proc = procs.spawn(runner_args(store_url, run_id))
    wait_until(lambda: checkpoints() >= 10 or proc.poll() is not None, "10 checkpoints")
    assert proc.poll() is None, "\n".join(procs.output(proc))
    os.kill(proc.pid, signal.SIGTERM)
    assert procs.finish(proc) == crashwf.EXIT_PREEMPTED, "\n".join(procs.output(proc))

    entries = engine.history(run_id)
    check_history(entries, crashwf.expected_step_keys(12, 3), ["StepPreempted", "RunPreempted"])
    preempted = entries[-2]
    assert preempted.fields["step_key"] == "process_units#0"
    assert preempted.fields["reason"] == entries[-1].fields["reason"] == "SIGTERM received"
    last = [e for e in entries if e.event_type == "StepCheckpointed"][-1]
    assert preempted.fields["last_checkpoint_sequence"] == last.fields["sequence"]
    cut = int(last.fields["state"]["i"])
    assert 10 <= cut < params["units"]
    assert last.fields["progress_done"] == cut
    # The checkpoint was written after the unit it covers: nothing beyond it was processed.
    assert dict(ledger.execute("SELECT unit, times FROM crash_units")) == dict.fromkeys(
        range(cut), 1
    )
    assert engine.status(run_id).status is RunStatus.PREEMPTED

    result = engine.resume(run_id)
    assert result.status is RunStatus.COMPLETED
    assert result.output == uninterrupted_output(tmp_path, params)

    # The second attempt started at the checkpoint; no unit before it ran twice (none did).
    runs = ledger.execute("SELECT attempt, start_unit FROM crash_unit_runs ORDER BY attempt")
    assert runs == [(1, 0), (2, cut)]
    units = dict(ledger.execute("SELECT unit, times FROM crash_units"))
    assert sorted(units) == list(range(params["units"]))
    assert all(units[u] == 1 for u in range(cut))
    assert all(units[u] <= 2 for u in range(cut, params["units"]))
    assert set(units.values()) == {1}
    entries = engine.history(run_id)
    check_history(entries, crashwf.expected_step_keys(12, 3), ["RunCompleted"])
    resumes = [e.fields["reason"] for e in entries if e.event_type == "RunResumed"]
    assert resumes == ["after_preemption"]
    assert checkpoint_before(entries, "process_units#0", 2) == cut
