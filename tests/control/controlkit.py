"""What the control tests share: the `stepstone` command line, a ledger beside each store, and
the checks every cancelled run must pass."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any
from uuid import UUID

import orjson
import pytest

from engine import Engine, HistoryEntry, RunStatus, Settings
from support import Ledger, child_env


def run_args(store_url: str, workflow: str, data: dict[str, Any], *extra: str) -> list[str]:
    return [sys.executable, "-m", "stepstone", "run", f"controlwf:{workflow}", "--input",
            orjson.dumps(data).decode(), "--db", store_url, *extra]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`stepstone ARGS` in a child process, to completion."""
    return subprocess.run([sys.executable, "-m", "stepstone", *args], capture_output=True,
                          text=True, env=child_env(), timeout=120, check=False)


def engine_for(store_url: str, **settings: Any) -> Engine:
    return Engine(Settings(database_url=store_url, worker_id="control-test", **settings))


def checkpoints(engine: Engine, run_id: UUID) -> int:
    try:
        run = engine.store.load(run_id)
    except Exception:  # not started yet
        return 0
    return sum(step.checkpoint_sequence for step in run.steps.values())


def effects(db: str) -> list[tuple[str, int, float]]:
    led = Ledger(db)
    try:
        return [(str(o), int(c), float(a)) for o, c, a in
                led.execute("SELECT operation_id, chunk, at FROM control_effects")]
    finally:
        led.close()


def check_cancelled(engine: Engine, run_id: UUID, reason: str) -> list[HistoryEntry]:
    """Ends `RunCancelled` with who and why; no step event anywhere after it; every step that
    was running when it landed was preempted first, with its progress saved."""
    info = engine.status(run_id)
    assert info.status is RunStatus.CANCELLED, info
    history = engine.history(run_id)
    last = history[-1]
    assert last.event_type == "RunCancelled"
    assert last.fields["reason"] == reason
    assert "@" in last.fields["by"]
    assert last.fields["requested_at"] is not None
    started = {e.fields["step_key"] for e in history if e.event_type == "StepStarted"}
    ended = {e.fields["step_key"] for e in history
             if e.event_type in ("StepCompleted", "StepFailed", "StepPreempted")}
    assert started <= ended, "a step attempt left open at the cancel"
    return history


def wait_for_run(procs: Any, proc: Any, condition: Any, what: str,
                 timeout_s: float = 90.0) -> None:
    """Wait until `condition()` while `proc` runs; fail with its output (and what the database
    was busy with) if it exits first or the time passes, so a failure says why."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if proc.poll() is not None or time.monotonic() > deadline:
            out, err = procs.output(proc)
            state = "exited with " + str(proc.returncode) if proc.poll() is not None \
                else f"still running after {timeout_s}s"
            pytest.fail(f"{what}: the process {state}\nstdout: {out[-2000:]}\n"
                        f"stderr: {err[-4000:]}\n{_busy_sessions()}")
        time.sleep(0.02)


def _busy_sessions() -> str:
    """What PostgreSQL's other sessions are doing (locks waited on), for a failure message."""
    try:
        import psycopg

        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/test",
                             connect_timeout=3) as conn:
            rows = conn.execute(
                "SELECT pid, state, wait_event_type, wait_event, left(query, 120) "
                "FROM pg_stat_activity WHERE state <> 'idle' AND pid <> pg_backend_pid()"
            ).fetchall()
        return "busy sessions:\n" + "\n".join(str(r) for r in rows)
    except Exception as e:  # diagnostics only
        return f"(could not read pg_stat_activity: {e})"
