"""Workflows the bench scripts' worker processes import (`--import bench_workflows`)."""

from __future__ import annotations

import time

from engine import step, step_context, workflow


@step
def bench_noop() -> None:
    return None


@workflow("bench_noop_chain", queue="bench")
def noop_chain(n: int) -> int:
    for _ in range(n):
        bench_noop()
    return n


@step
def bench_units(unit_ms: int) -> int:
    """Checkpoints every unit, forever: a run for killing its worker again and again."""
    ctx = step_context()
    i = int(ctx.last_checkpoint or 0)
    while True:
        time.sleep(unit_ms / 1000)
        i += 1
        ctx.checkpoint(i)


@workflow("bench_endless_units", queue="bench")
def endless_units(unit_ms: int) -> int:
    return bench_units(unit_ms)
