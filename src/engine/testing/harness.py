"""Run workflows in a test: a temporary store, injected faults, resume, attempt counts.

    from engine.testing import Fault, WorkflowHarness

    with WorkflowHarness() as h:
        first = h.run(my_workflow, {"n": 3}, fault=Fault.crash(step=2))
        assert first.interrupted
        assert h.resume(first.run_id).status is RunStatus.COMPLETED
        assert h.attempts(first.run_id) == {"fetch#0": 1, "load#0": 2, "report#0": 1}

Which fault to use:
- `Fault.crash(...)`: the drive runs in a child process that SIGKILLs itself at the point:
  the honest `kill -9`. Nothing after the point is written; a fan-out's other branches die
  too; the dead process's lease is left behind (a local resume takes it over at once). The
  workflow must be importable by the child as `module:name` (defined at module level).
- `Fault.halt(...)`: the same point in this process, by unwinding with `InjectedHalt`. No
  event is written after the point either, and it is fast and needs no importable module,
  but the lease is handed back and a fan-out's running siblings finish their steps first.
- `Fault.preempt(...)`: sets the engine's preemption token there, as SIGTERM does: the step
  stops at its next checkpoint (or finishes), and the run is recorded as preempted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import orjson

from engine import events as ev
from engine.definitions import Workflow
from engine.engine import Engine
from engine.identity import load_workflow
from engine.results import HistoryEntry
from engine.settings import Settings
from engine.status import RunStatus
from engine.testing.faults import Fault, FaultInjector, InjectedHalt, instrumented

CHILD_TIMEOUT_S = 300.0
EXIT_NOT_REACHED = 3


class FaultNotReachedError(AssertionError):
    """The drive ended without reaching the fault's point: the test would prove nothing."""


@dataclass(frozen=True)
class Outcome:
    """How one drive of a run ended, and the run's status afterwards (as `Engine.status`
    observes it: `interrupted` after a crash or a halt, since nobody holds the run then)."""

    run_id: UUID
    status: RunStatus
    interrupted: bool
    """True when the fault fired: the process died (crash), unwound (halt), or was preempted."""
    output: Any


class WorkflowHarness:
    """An engine on a temporary SQLite store (or the store `database_url` names), which can
    drive runs with a fault injected; closed (and the temporary store deleted) on exit."""

    def __init__(self, *workflows: Workflow[..., Any], database_url: str | None = None,
                 worker_id: str = "test-harness") -> None:
        self._tmp = None if database_url else tempfile.TemporaryDirectory(prefix="stepstone-")
        url = database_url or f"sqlite:///{self._tmp.name if self._tmp else ''}/store.db"
        self.engine = Engine(Settings(database_url=url, worker_id=worker_id))
        self._originals: dict[str, Workflow[..., Any]] = {wf.name: wf for wf in workflows}
        self._injector: FaultInjector | None = None

    @property
    def database_url(self) -> str:
        return self.engine.settings.database_url

    def __enter__(self) -> WorkflowHarness:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.engine.close()
        if self._tmp is not None:
            self._tmp.cleanup()

    # -- driving --------------------------------------------------------------------------
    def start(self, wf: Workflow[..., Any], input: Mapping[str, Any] | None = None, *,
              key: str | None = None) -> UUID:
        """Record a run without driving it."""
        self._originals[wf.name] = wf
        return self.engine.start(wf, input, key=key)

    def run(self, wf: Workflow[..., Any], input: Mapping[str, Any] | None = None, *,
            key: str | None = None, fault: Fault | None = None) -> Outcome:
        """Start a run and drive it until it ends, or until `fault` fires."""
        return self.resume(self.start(wf, input, key=key), fault=fault)

    def resume(self, run_id: UUID, *, fault: Fault | None = None) -> Outcome:
        """Drive a run from its log, as a restarted process would, optionally with a fault.

        Raises `FaultNotReachedError` if the drive ended without reaching the fault's point.
        """
        if fault is not None and fault.kind == "crash":
            fired = self._drive_in_child(run_id, fault)
        else:
            fired = self._drive_here(run_id, fault)
        if fault is not None and not fired:
            raise FaultNotReachedError(
                f"run {run_id}: the drive ended ({self.engine.status(run_id).status.value}) "
                f"before the fault's point ({fault.describe()}); count the steps the drive "
                "executes (replayed ones do not count) and aim within them"
            )
        info = self.engine.status(run_id)
        return Outcome(run_id, info.status, fired, info.output)

    def _definition(self, run_id: UUID) -> Workflow[..., Any]:
        state = self.engine.store.load(run_id).state
        wf = self._originals.get(state.workflow)
        if wf is None:
            wf = self._originals[state.workflow] = load_workflow(state.entrypoint)
        return wf

    def _drive_here(self, run_id: UUID, fault: Fault | None) -> bool:
        injector = FaultInjector(fault, self.engine.token)
        # Registered again before every drive: `start` registers the plain workflow.
        self.engine.register(instrumented(self._definition(run_id), lambda: self._injector))
        self._injector = injector
        try:
            self.engine.resume(run_id)
        except InjectedHalt:
            pass
        finally:
            self._injector = None
            self.engine.token.clear()  # a preemption ends with this drive, as a process would
        return injector.fired

    def _drive_in_child(self, run_id: UUID, fault: Fault) -> bool:
        entrypoint = self._definition(run_id).entrypoint
        if "<locals>" in entrypoint or entrypoint.startswith("__main__:"):
            raise ValueError(
                f"Fault.crash runs the drive in a child process, which imports the workflow "
                f"as {entrypoint!r}; define it at module level of an importable module, or "
                "use Fault.halt for the in-process imitation"
            )
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)  # what imports here
        args = [sys.executable, "-m", "engine.testing._child", self.database_url,
                str(run_id), orjson.dumps(fault.to_dict()).decode()]
        done = subprocess.run(args, env=env, capture_output=True, text=True,
                              timeout=CHILD_TIMEOUT_S, check=False)
        if done.returncode == -signal.SIGKILL:
            return True
        if done.returncode == EXIT_NOT_REACHED:
            return False
        raise RuntimeError(
            f"the child process driving run {run_id} exited with {done.returncode} instead "
            f"of dying at the fault ({fault.describe()}):\n{done.stderr.strip()}"
        )

    # -- reading --------------------------------------------------------------------------
    def history(self, run_id: UUID) -> list[HistoryEntry]:
        return self.engine.history(run_id)

    def attempts(self, run_id: UUID) -> dict[str, int]:
        """Attempts per step key, as the log records them (one per `StepStarted`).

        An attempt is counted when it starts; one cut short before its function ran (a crash
        at a step's start) counts too. Count executions of your own code in the step itself,
        e.g. with `IdempotencyLedger`.
        """
        counts: Counter[str] = Counter(
            e.fields["step_key"] for e in self.history(run_id) if e.kind is ev.StepStarted
        )
        return dict(counts)
