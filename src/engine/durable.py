"""What a workflow body can do besides calling steps: wait durably, and fan out.

Both are recorded in the run's log like steps, so a resumed run replays them: a sleep keeps its
original deadline, a fan-out returns its finished branches' recorded outputs and runs only the
rest. Outside a workflow run they behave as plain Python, so workflow code stays testable.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import timedelta
from typing import Any, TypeVar

from engine.context import current_runner
from engine.definitions import StepCall

R = TypeVar("R")


def sleep(duration: float | timedelta) -> None:
    """Wait `duration` (seconds or a timedelta) without holding a worker.

    The wake time is recorded when the sleep starts; under a worker the run is handed back
    and picked up again when it is due, by any worker, after any restart.
    """
    seconds = duration.total_seconds() if isinstance(duration, timedelta) else float(duration)
    runner: Any = current_runner.get()
    if runner is None:
        time.sleep(max(0.0, seconds))
        return
    runner.sleep(seconds)


def gather(calls: Iterable[StepCall[R]], *, limit: int = 4) -> list[R]:
    """Run independent step calls in parallel, at most `limit` at a time; results in order.

    Build the calls with `Step.bind`: `gather([fetch.bind(url) for url in urls], limit=8)`.
    Each branch is a step of its own (`fetch#0`, `fetch#1`, ... in list order). If a branch
    fails for good, no new branch starts, the running ones finish, and the first failure in
    list order is raised as `StepFailedError`.
    """
    batch = list(calls)
    runner: Any = current_runner.get()
    if runner is None:
        return [call() for call in batch]
    result: list[R] = runner.gather(batch, limit)
    return result
