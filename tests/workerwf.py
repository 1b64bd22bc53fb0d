"""Workflows for the many-workers tests, imported by `stepstone worker --import workerwf`.

Effects go to a ledger (see `support.Ledger`) named by the `db` input: `worker_effects` is keyed
by `step_context().operation_id` and written with ON CONFLICT DO NOTHING (the effect, exactly
once), `worker_attempts` gets a plain row at every execution (at-least-once, to see reruns).
Outputs depend only on the inputs, so every run's output is known without running it.
"""

from __future__ import annotations

import os
import signal
import threading
import time

from crashwf import chain as link
from engine import RetryPolicy, gather, sleep, step, step_context, workflow
from support import Ledger

_TABLES = (
    "CREATE TABLE IF NOT EXISTS worker_effects (operation_id TEXT PRIMARY KEY, tag TEXT NOT NULL,"
    " idx INTEGER NOT NULL, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS worker_attempts (operation_id TEXT NOT NULL, tag TEXT NOT NULL,"
    " pid INTEGER NOT NULL, at DOUBLE PRECISION NOT NULL)",
)
_local = threading.local()


def ledger(db: str) -> Ledger:
    """One ledger connection per thread: a worker drives several runs at once."""
    cache: dict[str, Ledger] = _local.__dict__.setdefault("ledgers", {})
    old = cache.get(db)
    if old is not None and old.broken:
        del cache[db]  # the server restarted: the step's retry gets a new connection
    if db not in cache:
        led = cache[db] = Ledger(db)
        for ddl in _TABLES:
            led.execute(ddl)
    return cache[db]


def apply(db: str, tag: str, idx: int, value: str, operation_id: str) -> None:
    led = ledger(db)
    led.execute(
        "INSERT INTO worker_attempts (operation_id, tag, pid, at) VALUES (?, ?, ?, ?)",
        (operation_id, tag, os.getpid(), time.time()),
    )
    led.execute(
        "INSERT INTO worker_effects (operation_id, tag, idx, value) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (operation_id) DO NOTHING",
        (operation_id, tag, idx, value),
    )


@step
def effect(db: str, tag: str, idx: int, prev: str, pause_ms: int) -> str:
    ctx = step_context()
    value = link(f"{tag}:{idx}", prev)
    time.sleep(pause_ms / 2000)
    apply(db, tag, idx, value, ctx.operation_id)
    time.sleep(pause_ms / 2000)
    return value


def expected_chain(tag: str, steps: int) -> str:
    prev = "genesis"
    for i in range(steps):
        prev = link(f"{tag}:{i}", prev)
    return prev


@workflow("chaos_chain", queue="chaos")
def chaos_chain(db: str, tag: str, steps: int = 20, pause_ms: int = 10) -> str:
    prev = "genesis"
    for i in range(steps):
        prev = effect(db, tag, i, prev, pause_ms)
    return prev


@workflow("limited_chain", queue="limited")
def limited_chain(db: str, tag: str, steps: int = 3, pause_ms: int = 100) -> str:
    prev = "genesis"
    for i in range(steps):
        prev = effect(db, tag, i, prev, pause_ms)
    return prev


@workflow("capped_chain", queue="capped", concurrency=2)
def capped_chain(db: str, tag: str, steps: int = 3, pause_ms: int = 100) -> str:
    prev = "genesis"
    for i in range(steps):
        prev = effect(db, tag, i, prev, pause_ms)
    return prev


@step
def units(db: str, tag: str, count: int, unit_ms: int) -> int:
    """Processes `count` units from its last checkpoint on; each unit is a keyed effect."""
    ctx = step_context()
    start = int(ctx.last_checkpoint["next"]) if ctx.last_checkpoint else 0
    ledger(db).execute(
        "INSERT INTO worker_attempts (operation_id, tag, pid, at) VALUES (?, ?, ?, ?)",
        (f"{ctx.operation_id}@{start}", tag, os.getpid(), time.time()),
    )
    for i in range(start, count):
        time.sleep(unit_ms / 1000)
        apply(db, tag, i, f"unit{i}", f"{ctx.operation_id}/unit{i}")
        ctx.checkpoint({"next": i + 1}, done=i + 1, total=count)
    return count


@workflow("long_units", queue="long")
def long_units(db: str, tag: str, count: int = 200, unit_ms: int = 20) -> int:
    return units(db, tag, count, unit_ms)


@step
def noted(db: str, tag: str, idx: int) -> int:
    apply(db, tag, idx, str(idx), step_context().operation_id)
    return idx


@workflow("sleeper", queue="timers")
def sleeper(db: str, tag: str, seconds: float = 2.0) -> list[int]:
    first = noted(db, tag, 0)
    sleep(seconds)
    return [first, noted(db, tag, 1)]



@step(retry=RetryPolicy(max_attempts=3, initial_interval_s=2.0, backoff=1.0, jitter=0.0))
def flaky(db: str, tag: str) -> str:
    ctx = step_context()
    apply(db, tag, ctx.attempt, "try", f"{ctx.operation_id}/try{ctx.attempt}")
    if ctx.attempt == 1:
        raise RuntimeError("first attempt fails on purpose")
    return "ok"


@workflow("retrier", queue="timers")
def retrier(db: str, tag: str) -> str:
    return flaky(db, tag)


@step
def branch(db: str, tag: str, idx: int, pause_ms: int) -> int:
    ctx = step_context()
    ledger(db).execute(
        "INSERT INTO worker_attempts (operation_id, tag, pid, at) VALUES (?, ?, ?, ?)",
        (ctx.operation_id, tag, os.getpid(), time.time()),
    )
    time.sleep(pause_ms / 1000)
    apply(db, tag, idx, str(idx * idx), ctx.operation_id)
    return idx * idx


@workflow("fan", queue="fan")
def fan(db: str, tag: str, width: int = 6, limit: int = 3, pause_ms: int = 200) -> int:
    squares = gather([branch.bind(db, tag, i, pause_ms) for i in range(width)], limit=limit)
    return sum(squares) + noted(db, tag, 1000)


@step
def doomed(db: str, tag: str, kills: int) -> int:
    """Records its execution, then SIGKILLs its own process on its first `kills` executions."""
    ctx = step_context()
    led = ledger(db)
    led.execute(
        "INSERT INTO worker_attempts (operation_id, tag, pid, at) VALUES (?, ?, ?, ?)",
        (ctx.operation_id, tag, os.getpid(), time.time()),
    )
    n = int(led.scalar("SELECT count(*) FROM worker_attempts WHERE operation_id = ?",
                       (ctx.operation_id,)))
    if n <= kills:
        os.kill(os.getpid(), signal.SIGKILL)
    return n


@workflow("crash_looper", queue="doom")
def crash_looper(db: str, tag: str, kills: int) -> int:
    return doomed(db, tag, kills)
