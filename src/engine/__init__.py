"""Stepstone's write side: durable workflows of idempotent steps on an append-only log.

    from engine import Engine, workflow, step, step_context

The public surface is below; everything else is private to the package.
"""

from engine.aggregate import WorkflowRun
from engine.audit.patching import patched
from engine.audit.replay_check import CheckResult, check_history
from engine.checkpoint_policy import CheckpointRejectedError
from engine.context import StepContext, step_context
from engine.definitions import Step, StepCall, Workflow, step, workflow
from engine.durable import gather, sleep
from engine.engine import Engine
from engine.errors import (
    ConfigurationError,
    DamagedLogError,
    EngineError,
    IdempotencyConflictError,
    InvalidInputError,
    LeaseLostError,
    NonDeterminismError,
    OutputEncodingError,
    RunConflictError,
    RunLeasedError,
    RunNotFinishedError,
    RunNotFoundError,
    RunParkedError,
    StepFailedError,
    StoreUnavailableError,
    StoreWriteError,
    UnknownEventError,
    WorkflowFailedError,
    WorkflowNotFoundError,
)
from engine.fingerprints import Fingerprint, file_fingerprint, function_fingerprint
from engine.identity import load_workflow, run_id_for_key
from engine.preemption import Preempted, PreemptionToken, signals_request_preemption
from engine.results import HistoryEntry, Placement, RunInfo, RunResult
from engine.retry import NO_RETRY, NonRetryableError, RetryPolicy
from engine.settings import Settings
from engine.status import RunStatus, StepStatus

__all__ = [
    "NO_RETRY",
    "CheckResult",
    "CheckpointRejectedError",
    "ConfigurationError",
    "DamagedLogError",
    "Engine",
    "EngineError",
    "Fingerprint",
    "HistoryEntry",
    "IdempotencyConflictError",
    "InvalidInputError",
    "LeaseLostError",
    "NonDeterminismError",
    "NonRetryableError",
    "OutputEncodingError",
    "Placement",
    "Preempted",
    "PreemptionToken",
    "RetryPolicy",
    "RunConflictError",
    "RunInfo",
    "RunLeasedError",
    "RunNotFinishedError",
    "RunNotFoundError",
    "RunParkedError",
    "RunResult",
    "RunStatus",
    "Settings",
    "Step",
    "StepCall",
    "StepContext",
    "StepFailedError",
    "StepStatus",
    "StoreUnavailableError",
    "StoreWriteError",
    "UnknownEventError",
    "Workflow",
    "WorkflowFailedError",
    "WorkflowNotFoundError",
    "WorkflowRun",
    "check_history",
    "file_fingerprint",
    "function_fingerprint",
    "gather",
    "load_workflow",
    "patched",
    "run_id_for_key",
    "signals_request_preemption",
    "sleep",
    "step",
    "step_context",
    "workflow",
]
