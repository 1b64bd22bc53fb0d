"""Test helpers for users' own workflow suites (pytest or any other runner).

    from engine.testing import Fault, IdempotencyLedger, WorkflowHarness, replay_history

- `WorkflowHarness`: an engine on a temporary store; run, interrupt (`Fault`), resume, and
  read attempts per step from the log.
- `Fault.crash / halt / preempt`: at the Nth step execution, a named step, or a step's Kth
  checkpoint; a crash kills a real child process with SIGKILL.
- `IdempotencyLedger`: a shared SQLite stand-in for an external system, counting attempts and
  keeping each keyed effect once; `assert_each_effect_once()`.
- `replay_history`: replay a stored run against the current code without running any step.
"""

from engine.testing.faults import Fault, InjectedHalt
from engine.testing.harness import FaultNotReachedError, Outcome, WorkflowHarness
from engine.testing.ledger import IdempotencyLedger
from engine.testing.replay import ReplayMismatchError, ReplayReport, replay_history

__all__ = [
    "Fault",
    "FaultNotReachedError",
    "IdempotencyLedger",
    "InjectedHalt",
    "Outcome",
    "ReplayMismatchError",
    "ReplayReport",
    "WorkflowHarness",
    "replay_history",
]
