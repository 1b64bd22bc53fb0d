"""Workflows for the testing-kit tests, importable by the child processes that crash.

Every step counts its own executions in an `IdempotencyLedger` (the `ledger` input): the
attempts of key `operation_id` are the step's executions, whatever the log says.
"""

from __future__ import annotations

from typing import Any

from engine import step, step_context, workflow
from engine.testing import IdempotencyLedger

_ledgers: dict[str, IdempotencyLedger] = {}


def ledger_at(path: str) -> IdempotencyLedger:
    if path not in _ledgers:
        _ledgers[path] = IdempotencyLedger(path)
    return _ledgers[path]


@step
def post(ledger: str, index: int) -> int:
    ctx = step_context()
    ledger_at(ledger).apply(ctx.operation_id, {"post": index})
    return index * 10


@step
def process_chunks(ledger: str, chunks: int) -> int:
    """One effect per chunk, a checkpoint after each: resumes from the last checkpoint."""
    ctx = step_context()
    led = ledger_at(ledger)
    start = int(ctx.last_checkpoint or 0)
    led.apply(ctx.operation_id, {"chunks": chunks})  # this execution
    led.apply(f"{ctx.operation_id}/start/{start}", start)  # where this execution began
    for i in range(start, chunks):
        led.apply(f"{ctx.operation_id}/chunk/{i}", i)
        ctx.checkpoint(i + 1, done=i + 1, total=chunks)
    return chunks


@workflow("kit-pipeline", version=1)
def pipeline(ledger: str, posts: int = 4, chunks: int = 5) -> dict[str, Any]:
    """post#0, process_chunks#0, then post#1 .. post#{posts-1}: 1 + 1 + posts-1 executions."""
    total = post(ledger, 0)
    done = process_chunks(ledger, chunks)
    for i in range(1, posts):
        total += post(ledger, i)
    return {"total": total, "chunks": done}


def step_keys(posts: int) -> list[str]:
    return ["post#0", "process_chunks#0", *(f"post#{i}" for i in range(1, posts))]
