"""The deploy-safety check: would the code now on disk resume these histories, or diverge?

It replays a run's workflow body with the engine's own driver, so the matching of step keys
and patch markers is exactly what a resume would do, with two differences: nothing is ever
written, and no step is ever executed. When the body asks for a step the history has no
completed record of, the run would resume cleanly from there, and the check stops.

    from engine.audit.replay_check import check_history
    result = check_history(my_workflow, events)   # events: a golden history you keep
    assert result.ok, result.message
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, cast
from uuid import UUID

from engine.aggregate import StepState, WorkflowRun
from engine.children import ChildFailedError
from engine.context import current_runner
from engine.definitions import Step, Workflow
from engine.driver import RunDriver
from engine.errors import NonDeterminismError, StepFailedError
from engine.events import RunEvent
from engine.preemption import PreemptionToken
from engine.status import RunStatus, StepStatus
from engine.store import RunStore

Outcome = Literal["resumes", "replays", "diverges", "raises"]


@dataclass(frozen=True)
class CheckResult:
    """How the current code fares on one history.

    `outcome`: "resumes" (replays up to `next_step`, which a resume would run next),
    "replays" (the whole body replays from the history: a finished run stays finished),
    "diverges" (at step `position`: the history recorded `expected`, the code asks `actual`),
    "raises" (the body raised where the history recorded no failure).
    """

    run_id: UUID
    workflow: str
    status: RunStatus
    outcome: Outcome
    steps_replayed: int
    next_step: str | None = None
    position: int | None = None
    expected: str | None = None
    actual: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.outcome in ("resumes", "replays")

    @property
    def message(self) -> str:
        if self.outcome == "resumes":
            where = f"at step {self.next_step}" if self.next_step else "where it stopped"
            return f"resumes cleanly {where} after {self.steps_replayed} replayed steps"
        if self.outcome == "replays":
            return f"replays cleanly ({self.steps_replayed} steps)"
        if self.outcome == "diverges":
            return (
                f"diverges at step position {self.position}: the history recorded "
                f"{self.expected!r}, the code asks for {self.actual!r}"
            )
        return f"the workflow body raises on replay: {self.error}"


class _NewHistory(BaseException):
    """The body asked for a step the history cannot answer: a resume would run it from here.

    A BaseException so that workflow code catching `Exception` cannot swallow it.
    """

    def __init__(self, step_key: str | None) -> None:
        self.step_key = step_key


class _CheckingDriver(RunDriver):
    """The engine's driver with its two side effects cut off: no step runs, nothing is saved."""

    def execute(
        self,
        step: Step[..., Any],
        key: str,
        recorded: StepState | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        started: int | None = None,
    ) -> Any:
        raise _NewHistory(key)

    def sleep(self, seconds: float) -> None:
        key, recorded = self.next_position("sleep")
        if recorded is None or recorded.status is not StepStatus.COMPLETED:
            raise _NewHistory(key)

    def receive(self, topic: str, timeout_s: float | None) -> Any:
        key, recorded = self.next_position("receive")
        if recorded is None or recorded.status is not StepStatus.COMPLETED:
            raise _NewHistory(key)  # a resume waits for (or takes) a message from here
        return recorded.output

    def child(self, workflow: Workflow[..., Any], input: Any) -> Any:
        key, recorded = self.next_position("child")
        if recorded is None or recorded.status is StepStatus.WAITING:
            raise _NewHistory(key)  # a resume starts (or waits for) the child from here
        if recorded.status is StepStatus.COMPLETED:
            return workflow.codec.decode(recorded.output)
        err = recorded.error
        raise ChildFailedError(self.run.state.children[key], str(recorded.output),
                               err.error_type if err else None, err.message if err else None)

    def wait_until(self, due: datetime) -> None:
        raise _NewHistory(None)  # a retry or a timer is due: a resume goes on from here

    def save(self) -> None:
        return None

    def check(self) -> CheckResult:
        run, definition = self.run, self.definition

        def result(outcome: Outcome, **fields: Any) -> CheckResult:
            replayed = self._position - (1 if outcome == "resumes" and fields.get("next_step")
                                         else 0)
            return CheckResult(run.id, run.state.workflow, run.status, outcome,
                               max(replayed, 0), **fields)

        reset = current_runner.set(self)
        try:
            definition.fn(**definition.bind_input(run.state.input))
            if self._divergence is not None:
                raise self._divergence
            if self._position < len(self._history):
                raise NonDeterminismError(
                    run.id, self._position, self._history[self._position], "<end of workflow>"
                )
        except _NewHistory as stop:
            return result("resumes", next_step=stop.step_key)
        except NonDeterminismError as e:
            return result("diverges", position=e.position, expected=e.expected, actual=e.actual)
        except StepFailedError as e:
            # A recorded failure replayed: the run failed (or will) exactly as its history says.
            return result("replays", error=str(e))
        except Exception as e:
            if self._divergence is not None:
                d = self._divergence
                return result("diverges", position=d.position, expected=d.expected,
                              actual=d.actual)
            if run.status is RunStatus.FAILED and run.state.error is not None:
                return result("replays", error=f"{type(e).__name__}: {e}")
            return result("raises", error=f"{type(e).__name__}: {e}")
        finally:
            current_runner.reset(reset)
        if run.status.is_terminal:
            return result("replays")
        return result("resumes")


def _write_nothing(run: WorkflowRun) -> None:
    """The checking driver's saver; `save` is cut off too, this is belt and braces."""


def run_of(events: Iterable[RunEvent]) -> WorkflowRun:
    """The aggregate a history replays to, with the library's own mutate (no store needed)."""
    run: WorkflowRun | None = None
    for event in events:
        run = cast(WorkflowRun, event.mutate(run))
    if run is None:
        raise ValueError("an empty history: a run's history starts with its RunStarted event")
    return run


def check_run(run: WorkflowRun, workflow: Workflow[..., Any]) -> CheckResult:
    """Check an already loaded run (as `RunStore.load` returns it) against `workflow`."""
    driver = _CheckingDriver(
        cast(RunStore, None),  # never used: save is cut off
        run,
        workflow,
        worker_id="replay-check",
        token=PreemptionToken(),
        saver=_write_nothing,
    )
    return driver.check()


def check_history(workflow: Workflow[..., Any], events: Iterable[RunEvent]) -> CheckResult:
    """Replay one run's `events` against `workflow` without running a step or writing anything.

    Use it in your own tests over golden histories (`engine.audit.export.read_export` reads the
    files `stepstone export` writes) to know before a deploy that in-flight runs will resume.
    """
    return check_run(run_of(events), workflow)
