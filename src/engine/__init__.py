"""Stepstone's write side: durable workflows of idempotent steps on an append-only log.

    from engine import Engine, workflow, step, step_context

The public surface is below; everything else is private to the package.
"""

from engine.aggregate import WorkflowRun
from engine.audit.patching import patched
from engine.audit.replay_check import CheckResult, check_history
from engine.checkpoint_policy import CheckpointRejectedError
from engine.children import ChildFailedError, child
from engine.context import StepContext, step_context
from engine.control import CancelOutcome
from engine.definitions import Step, StepCall, Workflow, step, workflow
from engine.durable import gather, sleep
from engine.engine import Engine
from engine.errors import (
    CancelPendingError,
    ConfigurationError,
    DamagedLogError,
    EngineError,
    IdempotencyConflictError,
    InvalidInputError,
    LeaseLostError,
    NonDeterminismError,
    OutputEncodingError,
    RunConflictError,
    RunFinishedError,
    RunLeasedError,
    RunNotFinishedError,
    RunNotFoundError,
    RunParkedError,
    StepFailedError,
    StepTimeoutError,
    StoreUnavailableError,
    StoreWriteError,
    UnknownEventError,
    WorkflowFailedError,
    WorkflowNotFoundError,
)
from engine.fingerprints import Fingerprint, file_fingerprint, function_fingerprint
from engine.identity import load_workflow, run_id_for_key
from engine.messages import MessageConflictError, SendOutcome, receive
from engine.preemption import Preempted, PreemptionToken, signals_request_preemption
from engine.published import NotPublishedError, publish
from engine.results import HistoryEntry, Placement, RunInfo, RunResult
from engine.retry import NO_RETRY, NonRetryableError, RetryPolicy
from engine.settings import Settings
from engine.status import STOPPED, TERMINAL, RunStatus, StepStatus

__all__ = [
    "NO_RETRY",
    "STOPPED",
    "TERMINAL",
    "CancelOutcome",
    "CancelPendingError",
    "CheckResult",
    "CheckpointRejectedError",
    "ChildFailedError",
    "ConfigurationError",
    "DamagedLogError",
    "Engine",
    "EngineError",
    "Fingerprint",
    "HistoryEntry",
    "IdempotencyConflictError",
    "InvalidInputError",
    "LeaseLostError",
    "MessageConflictError",
    "NonDeterminismError",
    "NonRetryableError",
    "NotPublishedError",
    "OutputEncodingError",
    "Placement",
    "Preempted",
    "PreemptionToken",
    "RetryPolicy",
    "RunConflictError",
    "RunFinishedError",
    "RunInfo",
    "RunLeasedError",
    "RunNotFinishedError",
    "RunNotFoundError",
    "RunParkedError",
    "RunResult",
    "RunStatus",
    "SendOutcome",
    "Settings",
    "Step",
    "StepCall",
    "StepContext",
    "StepFailedError",
    "StepStatus",
    "StepTimeoutError",
    "StoreUnavailableError",
    "StoreWriteError",
    "UnknownEventError",
    "Workflow",
    "WorkflowFailedError",
    "WorkflowNotFoundError",
    "WorkflowRun",
    "check_history",
    "child",
    "file_fingerprint",
    "function_fingerprint",
    "gather",
    "load_workflow",
    "patched",
    "publish",
    "receive",
    "run_id_for_key",
    "signals_request_preemption",
    "sleep",
    "step",
    "step_context",
    "workflow",
]
