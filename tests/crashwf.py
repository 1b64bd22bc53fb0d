"""A workflow for crash tests, importable by the subprocesses that drive it and get killed.

`ledger` posts `steps` entries to an idempotency-keyed ledger (a SQLite file or a table in a
PostgreSQL schema, named by the `db` input) and, part way through, runs one long step that
checkpoints after every unit. Three tables let a test see what really happened:

- `crash_effects`: one row per step, keyed by `step_context().operation_id` and written with
  INSERT ... ON CONFLICT DO NOTHING; the effect is exactly-once however often the step runs.
- `crash_attempts`: a plain INSERT at every execution of a posting step (at-least-once).
- `crash_units` / `crash_unit_runs`: how many times each unit of the checkpointing step was
  processed, and at which unit each execution of that step started.

Every step returns a value derived only from its index and the previous value, so the
workflow's output is the same whatever the interruptions.

Driven from a subprocess with (the tests directory on PYTHONPATH):

    python -c "import sys, crashwf; sys.exit(crashwf.main(sys.argv[1:]))" STORE_URL RUN_ID

which exits 0 when the run completed, 75 when it was preempted (SIGTERM/SIGINT), 1 if it failed.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from typing import Any
from uuid import UUID

from engine import (
    Engine,
    RunStatus,
    Settings,
    signals_request_preemption,
    step,
    step_context,
    workflow,
)
from support import Ledger

EXIT_COMPLETED = 0
EXIT_FAILED = 1
EXIT_PREEMPTED = 75

RUNNER_CODE = "import sys, crashwf; sys.exit(crashwf.main(sys.argv[1:]))"

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS crash_effects ("
    " operation_id TEXT PRIMARY KEY, step_index INTEGER NOT NULL, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS crash_attempts ("
    " operation_id TEXT NOT NULL, step_index INTEGER NOT NULL, attempt INTEGER NOT NULL,"
    " pid INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS crash_units (unit INTEGER PRIMARY KEY, times INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS crash_unit_runs ("
    " operation_id TEXT NOT NULL, attempt INTEGER NOT NULL, start_unit INTEGER NOT NULL,"
    " pid INTEGER NOT NULL)",
)


def create_tables(led: Ledger) -> None:
    for ddl in _SCHEMA:
        led.execute(ddl)


_ledgers: dict[str, Ledger] = {}


def ledger_for(db: str) -> Ledger:
    """One connection per ledger per process (tables are created on first use)."""
    if db not in _ledgers:
        led = Ledger(db)
        create_tables(led)
        _ledgers[db] = led
    return _ledgers[db]


def close_ledgers() -> None:
    """Close this process's ledger connections (tests call it; runner processes just exit)."""
    while _ledgers:
        _ledgers.popitem()[1].close()


def chain(label: object, prev: str) -> str:
    return hashlib.sha256(f"{label}|{prev}".encode()).hexdigest()[:16]


@step
def post_entry(db: str, index: int, prev: str, work_ms: int) -> str:
    """Apply one ledger entry: count the attempt, work, apply the keyed effect, work."""
    ctx = step_context()
    led = ledger_for(db)
    value = chain(index, prev)
    led.execute(
        "INSERT INTO crash_attempts (operation_id, step_index, attempt, pid) VALUES (?, ?, ?, ?)",
        (ctx.operation_id, index, ctx.attempt, os.getpid()),
    )
    time.sleep(work_ms / 2000)
    led.execute(
        "INSERT INTO crash_effects (operation_id, step_index, value) VALUES (?, ?, ?) "
        "ON CONFLICT (operation_id) DO NOTHING",
        (ctx.operation_id, index, value),
    )
    time.sleep(work_ms / 2000)
    return value


@step
def process_units(db: str, units: int, unit_ms: int, prev: str) -> str:
    """Process units from the last checkpoint on, checkpointing after every one."""
    ctx = step_context()
    led = ledger_for(db)
    start = int(ctx.last_checkpoint["i"]) if ctx.last_checkpoint else 0
    led.execute(
        "INSERT INTO crash_unit_runs (operation_id, attempt, start_unit, pid) VALUES (?, ?, ?, ?)",
        (ctx.operation_id, ctx.attempt, start, os.getpid()),
    )
    for i in range(start, units):
        time.sleep(unit_ms / 1000)
        led.execute(
            "INSERT INTO crash_units (unit, times) VALUES (?, 1) "
            "ON CONFLICT (unit) DO UPDATE SET times = crash_units.times + 1",
            (i,),
        )
        ctx.checkpoint({"i": i + 1}, done=i + 1, total=units)
    return chain(f"units:{units}", prev)


@step
def summarize(db: str) -> dict[str, Any]:
    """A digest of the ledger's effects in step order: what the side effects amount to."""
    rows = ledger_for(db).execute("SELECT step_index, value FROM crash_effects ORDER BY step_index")
    digest = hashlib.sha256("\n".join(f"{i}:{v}" for i, v in rows).encode()).hexdigest()
    return {"effects": len(rows), "effects_digest": digest}


@workflow("ledger", version=1)
def ledger(
    db: str,
    steps: int = 50,
    work_ms: int = 5,
    units: int = 40,
    unit_ms: int = 5,
    units_at: int = 10,
) -> dict[str, Any]:
    """`steps` posting steps with the checkpointing step after the first `units_at` of them."""
    prev = "genesis"
    outputs: list[str] = []
    for i in range(steps):
        if i == units_at:
            prev = process_units(db, units, unit_ms, prev)
            outputs.append(prev)
        prev = post_entry(db, i, prev, work_ms)
        outputs.append(prev)
    summary = summarize(db)
    digest = hashlib.sha256("\n".join(outputs).encode()).hexdigest()
    return {"digest": digest, "last": prev, "outputs": len(outputs), **summary}


def expected_step_keys(steps: int, units_at: int) -> list[str]:
    """The step keys a complete run records, in the order the workflow first starts them."""
    keys = [f"post_entry#{i}" for i in range(steps)]
    if units_at < steps:
        keys.insert(units_at, "process_units#0")
    return [*keys, "summarize#0"]


def main(argv: list[str] | None = None) -> int:
    """Drive one run to its end; SIGTERM/SIGINT preempt it (exit 75)."""
    store_url, run_id = argv if argv is not None else sys.argv[1:]
    settings = Settings(database_url=store_url, worker_id=f"crash-runner:{os.getpid()}")
    with Engine(settings) as engine, signals_request_preemption(engine.token):
        result = engine.resume(UUID(run_id))
    if result.status is RunStatus.COMPLETED:
        return EXIT_COMPLETED
    if result.status is RunStatus.PREEMPTED:
        return EXIT_PREEMPTED
    return EXIT_FAILED
