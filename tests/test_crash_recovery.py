"""Crash recovery with real processes: SIGKILL, SIGTERM and SIGINT at random points.

A runner subprocess drives the `crashwf.ledger` workflow (or the CLI drives the demo) and gets
killed mid-step again and again; the run must still complete with the output of an
uninterrupted run, every side effect applied exactly once although steps ran more than once,
and a history without gaps. Kill delays come from a seeded RNG, so a failure can be replayed.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

import crashwf
from engine import Engine, HistoryEntry, RunStatus, Settings
from support import Ledger, child_env, open_step, wait_until

TESTS_DIR = Path(__file__).parent
DEMO_RECORDS = 200_000
DEMO_STEPS = ["generate_dataset#0", "process_records#0", "summarize#0"]
DEMO_CODE = "from stepstone.cli import main; main()"
WAIT_S = 60.0

# Timings tuned so the runner needs several times longer than all the kill delays together:
# a run that completes before the last planned kill would mean fewer kills than promised.
FAST = {"kills": 4, "steps": 60, "work_ms": 10, "units": 40, "unit_ms": 8, "units_at": 8}
SLOW = {"kills": 24, "steps": 250, "work_ms": 16, "units": 120, "unit_ms": 10, "units_at": 60}


# -- processes ----------------------------------------------------------------------------
class Procs:
    """Spawns subprocesses with their output in files; kills whatever is left at the end."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.started: list[subprocess.Popen[bytes]] = []
        self._env = child_env()

    def spawn(self, args: list[str]) -> subprocess.Popen[bytes]:
        n = len(self.started)
        with (
            (self.logdir / f"{n}.out").open("wb") as out,
            (self.logdir / f"{n}.err").open("wb") as err,
        ):
            proc = subprocess.Popen(args, stdout=out, stderr=err, env=self._env)
        self.started.append(proc)
        return proc

    def output(self, proc: subprocess.Popen[bytes]) -> tuple[str, str]:
        n = self.started.index(proc)
        return (
            (self.logdir / f"{n}.out").read_text(errors="replace"),
            (self.logdir / f"{n}.err").read_text(errors="replace"),
        )

    def finish(self, proc: subprocess.Popen[bytes], timeout: float = 120.0) -> int:
        """Wait for a process that should end by itself; its output is shown if it hangs."""
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            out, err = self.output(proc)
            pytest.fail(f"process {proc.args} did not end in {timeout}s\n{out}\n{err}")

    def sigkill(self, proc: subprocess.Popen[bytes]) -> bool:
        """SIGKILL a running process: True if the kill landed, False if it had just exited."""
        os.kill(proc.pid, signal.SIGKILL)  # not reaped yet, so the pid is still this process
        rc = proc.wait(WAIT_S)
        if rc != -signal.SIGKILL:
            assert rc == 0, "\n".join(self.output(proc))
        return rc == -signal.SIGKILL

    def kill_all(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    p = Procs(tmp_path / "procs")
    try:
        yield p
    finally:
        p.kill_all()


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
        proc = procs.spawn(runner_args(engine.settings.database_url, run_id))
        wait_until(
            lambda m=measure, b=before, p=proc: m(led) > b or p.poll() is not None,
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


# -- history checks -----------------------------------------------------------------------
def check_history(entries: list[HistoryEntry], step_keys: list[str], last: list[str]) -> None:
    """Versions 1..n without gaps, steps strictly sequential, attempts numbered 1..m."""
    assert [e.version for e in entries] == list(range(1, len(entries) + 1))
    positions = [e.position for e in entries]
    assert positions == sorted(set(positions))
    assert entries[0].event_type == "RunStarted"
    assert [e.event_type for e in entries[-len(last) :]] == last
    order: list[str] = []
    attempts: dict[str, int] = {}
    completed: set[str] = set()
    sequence: dict[str, int] = {}
    for e in entries:
        key = e.fields.get("step_key")
        if e.event_type == "StepStarted":
            assert key not in completed, f"{key} started again after it completed"
            if key not in order:
                # Sequential workflow: a new step starts only once every earlier one completed.
                assert set(order) <= completed, f"{key} started before {set(order) - completed}"
                order.append(key)
            assert e.fields["attempt"] == attempts.get(key, 0) + 1, f"attempt gap at {key}"
            attempts[key] = e.fields["attempt"]
        elif e.event_type in ("StepCheckpointed", "StepCompleted", "StepPreempted", "StepFailed"):
            assert key in attempts, f"{e.event_type} of {key} without a StepStarted"
            assert key not in completed, f"{e.event_type} of {key} after its completion"
            assert e.fields["attempt"] == attempts[key], f"{e.event_type} of a stale attempt"
            if e.event_type == "StepCheckpointed":
                assert e.fields["sequence"] > sequence.get(key, 0)
                sequence[key] = e.fields["sequence"]
            if e.event_type == "StepCompleted":
                completed.add(key)
    assert order == step_keys[: len(order)]
    if last[-1] == "RunCompleted":
        assert order == step_keys
        assert completed == set(step_keys)
        started = sum(1 for e in entries if e.event_type == "StepStarted")
        assert started >= len(step_keys)


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


# -- the CLI demo -------------------------------------------------------------------------
def demo_args(workdir: Path, db: str) -> list[str]:
    return [
        sys.executable,
        "-c",
        DEMO_CODE,
        "demo",
        "--records",
        str(DEMO_RECORDS),
        "--workdir",
        str(workdir),
        "--db",
        db,
    ]


def last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else ""


@pytest.fixture(scope="module")
def demo_digest(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The digest of an uninterrupted demo run, in its own workdir and store."""
    base = tmp_path_factory.mktemp("demo-reference")
    done = subprocess.run(
        demo_args(base / "work", f"sqlite:///{base / 'store.db'}"),
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    line = last_line(done.stdout)
    assert line.startswith("result digest: ")
    return line.removeprefix("result digest: ")


def demo_run(engine: Engine) -> UUID | None:
    runs = engine.runs()
    return runs[0].run_id if runs else None


def demo_checkpoint(engine: Engine) -> int:
    """How many records the demo run has checkpointed so far (0 before it exists)."""
    run_id = demo_run(engine)
    if run_id is None:
        return 0
    done = [
        e.fields["progress_done"]
        for e in engine.history(run_id)
        if e.event_type == "StepCheckpointed"
    ]
    return done[-1] if done else 0


def check_demo_history(engine: Engine) -> list[HistoryEntry]:
    run_id = demo_run(engine)
    assert run_id is not None
    entries = engine.history(run_id)
    check_history(entries, DEMO_STEPS, ["RunCompleted"])
    offsets = [e.fields["state"]["offset"] for e in entries if e.event_type == "StepCheckpointed"]
    assert offsets == sorted(offsets)
    assert offsets[-1] == DEMO_RECORDS
    return entries


def test_demo_survives_sigkill_at_random_points(
    engine: Engine, store_url: str, procs: Procs, tmp_path: Path, demo_digest: str
) -> None:
    rng = random.Random(f"demo-{store_url.split(':')[0]}")
    workdir = tmp_path / "demo"
    landed: list[str] = []
    for n in range(3):
        run_id = demo_run(engine)
        before = engine.status(run_id).version if run_id else 0
        saved = demo_checkpoint(engine)
        proc = procs.spawn(demo_args(workdir, store_url))
        # The first kill lands in the first step; the next ones once the checkpointing step
        # saved more records, so a kill also cuts a step that resumes from a checkpoint.
        aim = None if n == 0 else "process_records#0"

        def working(p: subprocess.Popen[bytes] = proc, v: int = before, c: int = saved,
                    step: str | None = aim) -> bool:
            """The runner wrote something and is inside the aimed step, or it exited."""
            run = demo_run(engine)
            if p.poll() is not None:
                return True
            if run is None or engine.status(run).version <= v:
                return False
            current = open_step(engine.history(run))
            if step is None:
                return current is not None
            return current == step and demo_checkpoint(engine) > c

        wait_until(working, "the demo to work inside a step")
        time.sleep(rng.uniform(0.0, 0.3))  # a random point inside the step
        if proc.poll() is not None:
            assert proc.returncode == 0, "\n".join(procs.output(proc))
            break
        if not procs.sigkill(proc):
            break
        run_id = demo_run(engine)
        assert run_id is not None
        step = open_step(engine.history(run_id))
        assert step is not None, "the kill hit no open step"
        landed.append(step)
    final = procs.spawn(demo_args(workdir, store_url))
    assert procs.finish(final) == 0, "\n".join(procs.output(final))
    out, _ = procs.output(final)
    print(f"demo kills landed in: {landed}")
    assert len(landed) >= 2
    assert last_line(out) == f"result digest: {demo_digest}"
    check_demo_history(engine)


def test_demo_sigint_preempts_with_exit_75_and_resumes(
    engine: Engine, store_url: str, procs: Procs, tmp_path: Path, demo_digest: str
) -> None:
    workdir = tmp_path / "demo"
    proc = procs.spawn(demo_args(workdir, store_url))
    wait_until(
        lambda: demo_checkpoint(engine) >= 20_000 or proc.poll() is not None,
        "the demo to checkpoint 20000 records",
    )
    assert proc.poll() is None, "\n".join(procs.output(proc))
    os.kill(proc.pid, signal.SIGINT)
    assert procs.finish(proc) == 75, "\n".join(procs.output(proc))
    _, err = procs.output(proc)
    assert "Resume with" in err
    cut = demo_checkpoint(engine)
    assert 20_000 <= cut < DEMO_RECORDS

    again = procs.spawn(demo_args(workdir, store_url))
    assert procs.finish(again) == 0, "\n".join(procs.output(again))
    out, err = procs.output(again)
    assert "resuming run" in err
    assert last_line(out) == f"result digest: {demo_digest}"
    entries = check_demo_history(engine)
    resumed = [e for e in entries if e.event_type == "StepStarted" and e.fields["attempt"] == 2]
    assert [e.fields["step_key"] for e in resumed] == ["process_records#0"]
