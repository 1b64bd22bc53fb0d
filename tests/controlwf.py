"""Workflows for the control tests (cancel, deadlines, step timeouts, runaway limits).

Effects go to a ledger (`support.Ledger`) named by the `db` input, each row keyed on the step's
operation id and the chunk, with the wall time it was written: a test compares those times with
the time `RunCancelled` was recorded.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta

from engine import RetryPolicy, gather, sleep, step, step_context, workflow
from support import Ledger

_local = threading.local()
_CREATE = threading.Lock()


def ledger(db: str) -> Ledger:
    """One connection per thread: fan-out branches write from several."""
    cache: dict[str, Ledger] = _local.__dict__.setdefault("ledgers", {})
    if db not in cache:
        led = cache[db] = Ledger(db)
        with _CREATE:  # PostgreSQL: two CREATE TABLE IF NOT EXISTS at once can collide
            led.execute("CREATE TABLE IF NOT EXISTS control_effects (operation_id TEXT NOT "
                        "NULL, chunk INTEGER NOT NULL, at DOUBLE PRECISION NOT NULL, "
                        "PRIMARY KEY (operation_id, chunk))")
    return cache[db]


def effect(db: str, chunk: int) -> None:
    op = step_context().operation_id
    ledger(db).execute(
        "INSERT INTO control_effects (operation_id, chunk, at) VALUES (?, ?, ?) "
        "ON CONFLICT (operation_id, chunk) DO NOTHING", (op, chunk, time.time()),
    )


@step
def copy_chunks(db: str, chunks: int, pause_ms: int) -> int:
    """A long step that checkpoints after each chunk's effect."""
    ctx = step_context()
    done = ctx.last_checkpoint or 0
    while done < chunks:
        time.sleep(pause_ms / 1000)
        effect(db, done)
        done += 1
        ctx.checkpoint(done, done=done, total=chunks)
    return done


@workflow()
def chunked(db: str, chunks: int = 1000, pause_ms: int = 20) -> int:
    return copy_chunks(db, chunks, pause_ms) + copy_chunks(db, chunks, pause_ms)


@step
def short(db: str, i: int, pause_ms: int) -> int:
    time.sleep(pause_ms / 1000)
    effect(db, i)
    return i


@workflow()
def many_steps(db: str, steps: int = 1000, pause_ms: int = 20) -> int:
    """Short steps without checkpoints: a cancel lands at a step boundary."""
    return sum(short(db, i, pause_ms) for i in range(steps))


@workflow()
def fan_out(db: str, branches: int = 4, chunks: int = 1000, pause_ms: int = 20) -> int:
    return sum(gather([copy_chunks.bind(db, chunks, pause_ms) for _ in range(branches)]))


@workflow()
def napper(seconds: float = 3600.0) -> str:
    sleep(seconds)
    return "rested"


@workflow(timeout=timedelta(seconds=1.5))
def bounded(db: str, chunks: int = 1000, pause_ms: int = 20) -> int:
    """Declares its own deadline: 1.5 s after it starts."""
    return copy_chunks(db, chunks, pause_ms)


@step(timeout=0.5, retry=RetryPolicy(max_attempts=3, initial_interval_s=0.01))
def slow_checkpointer(pause_ms: int) -> int:
    """Checkpoints every `pause_ms`; past its 0.5 s timeout the checkpoint raises."""
    ctx = step_context()
    n = 0
    while True:
        time.sleep(pause_ms / 1000)
        n += 1
        ctx.checkpoint(n)


@workflow()
def step_timeout(pause_ms: int = 50) -> int:
    return slow_checkpointer(pause_ms)


@step(timeout=0.3, retry=RetryPolicy(max_attempts=2, initial_interval_s=0.01))
def never_checkpoints(seconds: float) -> str:
    time.sleep(seconds)
    return "woke"


@workflow()
def stuck(seconds: float = 30.0) -> str:
    return never_checkpoints(seconds)


@step(timeout=5.0)
def quick_enough() -> str:
    return "in time"


@workflow()
def in_time() -> str:
    return quick_enough()


@step
def spin() -> None:
    """A bug: checkpoints in a loop without making progress."""
    ctx = step_context()
    while True:
        ctx.checkpoint({"at": 0})


@workflow()
def runaway() -> None:
    spin()
