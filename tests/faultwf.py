"""A representative workflow for store-fault tests: steps, checkpoints, a fan-out, a durable
sleep, a retried failure and the run's end, with every execution counted in a ledger."""

from __future__ import annotations

import threading
import time
from collections import Counter

from engine import RetryPolicy, gather, sleep, step, step_context, workflow

EXECUTIONS: Counter[str] = Counter()
"""operation id -> how many times step code ran for it (every execution, not a set)."""
_lock = threading.Lock()
_flaky_failed: set[str] = set()


def reset() -> None:
    with _lock:
        EXECUTIONS.clear()
        _flaky_failed.clear()


def _count() -> str:
    ctx = step_context()
    with _lock:
        EXECUTIONS[ctx.operation_id] += 1
    return ctx.operation_id


@step
def load(n: int) -> list[int]:
    _count()
    return list(range(n))


@step
def chunked(items: list[int]) -> int:
    _count()
    ctx = step_context()
    offset = ctx.last_checkpoint or 0
    total = 0 if offset == 0 else sum(items[:offset])
    while offset < len(items):
        total += items[offset]
        offset += 1
        ctx.checkpoint(offset, done=offset, total=len(items))
    return total


@step
def square(x: int) -> int:
    _count()
    return x * x


@step(retry=RetryPolicy(max_attempts=3, initial_interval_s=0.0))
def flaky(x: int) -> int:
    """Fails its first attempt of each run, once (a retry that spends budget on purpose)."""
    op = _count()
    with _lock:
        first = op not in _flaky_failed
        _flaky_failed.add(op)
    if first:
        raise RuntimeError("first attempt fails")
    return x + 1


@workflow("store-faults", version=1)
def representative(n: int = 4) -> dict[str, int]:
    items = load(n)
    total = chunked(items)
    squares = gather([square.bind(x) for x in items], limit=2)
    sleep(0.01)
    bumped = flaky(total)
    return {"total": total, "squares": sum(squares), "bumped": bumped}


@step
def fill(count: int, size: int) -> int:
    """Checkpoints `count` times, each with a `size`-byte state (a partial result)."""
    ctx = step_context()
    done = ctx.last_checkpoint["done"] if ctx.last_checkpoint else 0
    while done < count:
        done += 1
        ctx.checkpoint({"done": done, "pad": "x" * size}, done=done, total=count)
    return done


@workflow("big-checkpoints", version=1)
def big_checkpoints(count: int = 8, size: int = 150_000) -> int:
    return fill(count, size) + add_one(count)


@step
def add_one(x: int) -> int:
    return x + 1


@step
def tick(i: int, pause_ms: int) -> int:
    ctx = step_context()
    time.sleep(pause_ms / 2000)
    ctx.checkpoint(i)
    time.sleep(pause_ms / 2000)
    return i * 2


@workflow("slow-chain", version=1)
def slow_chain(n: int = 40, pause_ms: int = 30) -> int:
    return sum(tick(i, pause_ms) for i in range(n))
