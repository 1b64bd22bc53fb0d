"""Fan-out inside a run: `gather` runs independent step calls in parallel, bounded.

Kept apart from the driver because it is the one part that runs steps on several threads; it
drives the driver's own step machinery (positions, attempts, saves), which its lock makes safe
to call from branch threads.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from engine.aggregate import StepState
from engine.definitions import Step, StepCall
from engine.driver import NOT_RECORDED, RunDriver, replayed
from engine.errors import NonDeterminismError, StepFailedError
from engine.preemption import Preempted
from engine.status import StepStatus
from engine.stopping import Cancelled, DeadlinePassed, LimitReached
from engine.unwinding import Abandon, Halt, Suspend


def gather_branches(
    driver: RunDriver, calls: Sequence[StepCall[Any]], limit: int
) -> list[Any]:
    """Run independent steps in parallel (at most `limit` at once); results in call order.

    Each branch is an ordinary step with its own key, recorded and resumed on its own.
    Starts are recorded here, in call order, so the history's order does not depend on
    thread timing. A branch's completion is saved at once: a long fan-out keeps each
    finished branch even if the process dies before the others end.
    """
    if limit < 1:
        raise ValueError(f"gather(limit={limit}) must allow at least one branch at a time")
    results: list[Any] = [None] * len(calls)
    failures: dict[int, BaseException] = {}
    stop = threading.Event()
    slots = threading.Semaphore(limit)
    futures: dict[int, Future[Any]] = {}
    covered = 0  # calls replayed or dispatched; fewer than all means the loop stopped early

    def branch(step: Step[..., Any], key: str, recorded: StepState | None,
               call: StepCall[Any], attempt: int) -> Any:
        try:
            value = driver.execute(step, key, recorded, call.args, call.kwargs,
                                  started=attempt)
            driver.save()
            return value
        except BaseException:
            stop.set()
            raise
        finally:
            slots.release()

    with ThreadPoolExecutor(max_workers=min(limit, max(1, len(calls))),
                            thread_name_prefix="stepstone-branch") as pool:
        for i, call in enumerate(calls):
            if stop.is_set() or driver.stop_pending() is not None:
                break
            key, recorded = driver.next_position(call.step.name)
            try:
                value = replayed(call.step, key, recorded)
            except StepFailedError as e:
                failures[i] = e
                break
            if value is not NOT_RECORDED:
                results[i] = value
                covered += 1
                continue
            if recorded is not None and recorded.next_attempt_at is not None \
                    and recorded.status is StepStatus.FAILED:
                try:
                    driver.wait_until(recorded.next_attempt_at)
                except BaseException as e:
                    failures[i] = e
                    break
            while not slots.acquire(timeout=0.05):
                if stop.is_set():
                    break
            else:
                if stop.is_set():  # a branch failed while this one waited for its slot
                    slots.release()
                    break
                attempt = (recorded.attempt if recorded else 0) + 1
                driver.record(driver.run.start_step, key, call.step.name, attempt)
                driver.save()
                ctx = contextvars.copy_context()
                futures[i] = pool.submit(ctx.run, branch, call.step, key, recorded, call,
                                         attempt)
                covered += 1
                continue
            break
    for i, fut in futures.items():
        exc = fut.exception()
        if exc is None:
            results[i] = fut.result()
        else:
            failures[i] = exc
    if failures:
        raise _most_severe(failures)
    if covered < len(calls):  # stopped dispatching for a preemption, a cancel, the deadline
        raise driver.stop_pending() or Preempted(driver.token.reason)
    return results


# Which branch error a fan-out raises when several branches stopped: the one that says the most
# about the run's state wins (losing the run beats a divergence beats an engine error beats a
# stop beats a failure).
_SEVERITY: tuple[type[BaseException], ...] = (
    Abandon, NonDeterminismError, Halt, LimitReached, Cancelled, DeadlinePassed, Preempted,
    Suspend, StepFailedError,
)


def _most_severe(failures: dict[int, BaseException]) -> BaseException:
    for kind in _SEVERITY:
        found = [failures[i] for i in sorted(failures) if isinstance(failures[i], kind)]
        if found:
            if kind is Suspend:
                return min(found, key=lambda e: e.due)  # type: ignore[attr-defined]
            return found[0]
    return failures[min(failures)]
