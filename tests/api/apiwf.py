"""Workflows the API tests run for real: completions, retries, failures, preemption, a crash.

Importable by subprocesses too (the crash test runs `crash_main` in a child that dies with
`os._exit` in the middle of a step, leaving an attempt with no recorded end).
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from uuid import UUID

from engine import (
    Engine,
    NonRetryableError,
    RetryPolicy,
    Settings,
    step,
    step_context,
    workflow,
)

FAST = RetryPolicy(max_attempts=4, initial_interval_s=0.01, backoff=1.0, jitter=0.0)
CALLS: Counter[str] = Counter()
CRASH_CODE = "import sys, apiwf; apiwf.crash_main(sys.argv[1], sys.argv[2])"


@step
def units(total: int, unit_ms: int = 0, stop_at: int = -1) -> int:
    """Counts to `total` with a checkpoint per unit; on attempt 1 may ask for preemption."""
    ctx = step_context()
    start = ctx.last_checkpoint or 0
    for i in range(start, total):
        if i == stop_at and ctx.attempt == 1:
            PREEMPT_HOOK[0]()
        if unit_ms:
            time.sleep(unit_ms / 1000)
        ctx.checkpoint(i + 1, done=i + 1, total=total)
    return total


PREEMPT_HOOK: list = [lambda: None]


@step
def double(n: int) -> int:
    return 2 * n


@step(retry=FAST)
def flaky(name: str, failures: int) -> str:
    CALLS[name] += 1
    if CALLS[name] <= failures:
        raise ConnectionError(f"{name}: try {CALLS[name]} lost the connection")
    return "ok"


@step(retry=FAST)
def broken(row: int) -> None:
    raise NonRetryableError(f"row {row} has no id")


@step
def fragile(marker: str) -> str:
    """Kills its process on the first attempt, as a power cut would."""
    if step_context().attempt == 1 and os.environ.get("APIWF_CRASH") == "1":
        os._exit(9)
    return marker


@workflow("api-units")
def counting(total: int, unit_ms: int = 0, stop_at: int = -1) -> int:
    counted = units(total, unit_ms, stop_at)
    return double(counted)


@workflow("api-flaky")
def retrying(name: str, failures: int = 2) -> str:
    return flaky(name, failures)


@workflow("api-broken")
def failing(row: int) -> None:
    double(row)
    broken(row)


@workflow("api-crash")
def crashing(marker: str) -> str:
    first = double(1)
    return fragile(marker) + str(first)


def crash_main(store_url: str, run_id: str) -> None:
    os.environ["APIWF_CRASH"] = "1"
    with Engine(Settings(database_url=store_url, worker_id="doomed-worker")) as engine:
        engine.resume(UUID(run_id))
    sys.exit(0)  # not reached: the step kills the process
