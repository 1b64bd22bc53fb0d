"""Workflows for the child-workflow tests: a parent with three children, one that may fail.

Steps record their executions in a ledger (`support.Ledger`) named by `db`, so a test can show
each child's work ran once even when workers were killed.
"""

from __future__ import annotations

import time
from typing import Any

from engine import ChildFailedError, child, step, step_context, workflow
from support import Ledger


def record(db: str | None) -> None:
    if db is None:
        return
    led = Ledger(db)
    try:
        led.execute("CREATE TABLE IF NOT EXISTS child_effects (operation_id TEXT PRIMARY KEY, "
                    "n INTEGER NOT NULL)")
        led.execute("INSERT INTO child_effects (operation_id, n) VALUES (?, 1) ON CONFLICT "
                    "(operation_id) DO UPDATE SET n = child_effects.n + 1",
                    (step_context().operation_id,))
    finally:
        led.close()


@step
def square(n: int, pause_s: float, db: str | None) -> int:
    time.sleep(pause_s)
    record(db)
    if n < 0:
        raise ValueError(f"no square for {n}")
    return n * n


@workflow("kid")
def kid(n: int, pause_s: float = 0.0, db: str | None = None) -> int:
    return square(n, pause_s, db) + square(n + 1, pause_s, db)


@workflow("parent")
def parent(ns: list[int], pause_s: float = 0.0, db: str | None = None) -> dict[str, Any]:
    results: list[Any] = []
    for n in ns:
        try:
            results.append(child(kid, {"n": n, "pause_s": pause_s, "db": db}))
        except ChildFailedError as e:  # a child's failure is the parent's to handle
            results.append(f"{e.status}: {e.error_type}")
    return {"results": results, "total": sum(r for r in results if isinstance(r, int))}


def expected(ns: list[int]) -> dict[str, Any]:
    results: list[Any] = [n * n + (n + 1) * (n + 1) if n >= 0 else "failed: ValueError"
                          for n in ns]
    return {"results": results, "total": sum(r for r in results if isinstance(r, int))}
