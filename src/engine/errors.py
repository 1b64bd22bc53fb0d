"""The engine's exceptions: one root, structured attributes, messages that say what to do."""

from __future__ import annotations

from uuid import UUID


class EngineError(Exception):
    """Root of every error the engine raises on purpose."""


class ConfigurationError(EngineError):
    """A setting (a store URL, an option) cannot be used as given."""


class StoreUnavailableError(EngineError):
    """The event store cannot be reached or opened; nothing was written."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(
            f"cannot open the event store at {url}: {reason}. "
            "Check the URL (option --db or STEPSTONE_DATABASE_URL) and that the database is up."
        )


class StoreWriteError(StoreUnavailableError):
    """A save failed, or may have failed (the connection dropped during the commit).

    The run's in-memory state is then ahead of what the log may hold, so nothing more is
    written from it; the run is reloaded from the log, where its progress up to the last
    successful save is kept.
    """

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(url, reason)
        self.args = (
            f"could not write to the event store at {url}: {reason}. The run's progress up to "
            "its last successful save is kept in the log; nothing after it was written.",
        )


class DamagedLogError(EngineError):
    """A run's stored events cannot be replayed: a version is missing, or an event's payload
    is not what this release wrote. Never a silent skip: the run is not driven further."""

    def __init__(self, run_id: UUID | str, version: int, position: int | None, what: str) -> None:
        self.run_id = run_id
        self.version = version
        self.position = position
        self.what = what
        where = f"version {version}" + (f" (log position {position})" if position else "")
        super().__init__(
            f"the log of run {run_id} is damaged at {where}: {what}. Nothing was written. "
            f"`stepstone verify {run_id}` checks the run's hash chain and names the first bad "
            "event; restore the store from a backup to drive the run again"
        )


class WorkflowNotFoundError(EngineError):
    """A workflow reference does not name a workflow the engine can load."""


class InvalidInputError(EngineError):
    """A run's input does not fit the workflow's parameters; nothing was written."""


class OutputEncodingError(EngineError):
    """A step or workflow returned a value that cannot be recorded as JSON.

    Nothing about that value is written: the run stays resumable, and after the code is fixed
    a resume runs the step again.
    """

    def __init__(self, where: str, value_type: str, reason: str) -> None:
        self.where = where
        self.value_type = value_type
        super().__init__(
            f"{where} returned a value of type {value_type} that cannot be recorded: {reason}. "
            "Return JSON-compatible data, or annotate the return type with a pydantic-compatible "
            "type; the run was left resumable."
        )


class RunNotFoundError(EngineError):
    """No run with that id exists in the store."""

    def __init__(self, run_id: UUID | str) -> None:
        self.run_id = run_id
        super().__init__(f"no run with id {run_id} in this store; `stepstone runs` lists them")


class IdempotencyConflictError(EngineError):
    """An idempotency key was reused for a different workflow input."""

    def __init__(self, key: str, run_id: UUID) -> None:
        self.key = key
        self.run_id = run_id
        super().__init__(
            f"idempotency key {key!r} already started run {run_id} with a different input; "
            "use another key, or the same input to get that run back"
        )


class NonDeterminismError(EngineError):
    """The workflow body asked for a different step than its history recorded.

    Raised before anything is written, so the run's log is left exactly as it was.
    """

    def __init__(self, run_id: UUID, position: int, expected: str, actual: str) -> None:
        self.run_id = run_id
        self.position = position
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"run {run_id} diverged from its history at step position {position}: "
            f"the history recorded {expected!r} but the workflow code now asks for {actual!r}. "
            "The run was not changed; restore the code the run started with to resume it."
        )


class RunConflictError(EngineError):
    """Another writer appended to the run first (optimistic concurrency); nothing was written."""

    def __init__(self, run_id: UUID) -> None:
        self.run_id = run_id
        super().__init__(
            f"run {run_id} was changed by another worker since this one loaded it (is another "
            "process driving it?); nothing of this worker's was written. "
            f"`stepstone status {run_id}` shows where it stands"
        )


class RunNotFinishedError(EngineError):
    """A result was asked for a run that has not finished."""


class WorkflowFailedError(EngineError):
    """The run ended failed; carries the recorded error."""

    def __init__(self, run_id: UUID, error_type: str, message: str) -> None:
        self.run_id = run_id
        self.error_type = error_type
        self.error_message = message
        super().__init__(f"run {run_id} failed: {error_type}: {message}")


class UnknownEventError(EngineError):
    """A stored event's type is not known to this code, or cannot be decoded."""

    def __init__(
        self, topic: str, run_id: UUID | str, version: int, reason: str, *, newer: bool = True
    ) -> None:
        self.topic = topic
        self.run_id = run_id
        self.version = version
        advice = (
            "Upgrade Stepstone to a release that knows this event type."
            if newer else
            "Its JSON does not fit this release's event class: an upcaster is missing, or the "
            f"event was edited (`stepstone verify {run_id}` tells which)."
        )
        super().__init__(
            f"cannot decode stored event {topic!r} (run {run_id}, version {version}): {reason}. "
            + advice
        )


class LeaseLostError(EngineError):
    """This worker's lease on a run expired or was taken over; it wrote nothing more."""

    def __init__(self, run_id: UUID, detail: str) -> None:
        self.run_id = run_id
        super().__init__(
            f"run {run_id}: this process no longer holds the run's lease ({detail}), so it "
            "stopped without writing more; the progress saved before is kept"
        )


class RunLeasedError(EngineError):
    """Another live worker holds the run's lease, so this process must not drive it."""

    def __init__(self, run_id: UUID, holder: str) -> None:
        self.run_id = run_id
        self.holder = holder
        super().__init__(
            f"run {run_id} is being driven by worker {holder!r} right now; wait for it to "
            f"finish (`stepstone status {run_id}`), or stop that worker and retry once its "
            "lease expires"
        )


class RunParkedError(NonDeterminismError):
    """Resuming diverged from the history, so the run was parked: `RunParked` is all it wrote."""

    def __init__(self, run_id: UUID, position: int, expected: str, actual: str) -> None:
        super().__init__(run_id, position, expected, actual)
        self.args = (
            f"run {run_id} diverged from its history at step position {position}: the history "
            f"recorded {expected!r} but the workflow code now asks for {actual!r}. The run was "
            "parked (status parked; nothing else was written). Deploy code that replays its "
            "history (guard the change with patched(...)), then `stepstone resume "
            f"{run_id}`; `stepstone replay --check` tells which runs a deploy would park.",
        )


class StepFailedError(EngineError):
    """Raised in workflow code when a step failed for good; uncaught, it fails the run."""

    def __init__(self, step_key: str, error_type: str, message: str) -> None:
        self.step_key = step_key
        self.error_type = error_type
        self.error_message = message
        super().__init__(f"step {step_key} failed: {error_type}: {message}")


class StepTimeoutError(Exception):
    """A step attempt ran past its `@step(timeout=...)`: a failure like any other, retried
    under the step's retry policy (not an `EngineError`: it is the step's outcome).

    Raised by `checkpoint()` once the timeout has passed; an attempt that never checkpoints is
    abandoned by the driver after a short grace, and this is recorded as its failure.
    """

    def __init__(self, step_key: str, timeout_s: float, *, abandoned: bool = False) -> None:
        self.step_key = step_key
        self.timeout_s = timeout_s
        self.abandoned = abandoned
        how = ("it did not return or checkpoint, so its worker stopped waiting for it (its "
               "thread may still be running)" if abandoned else "told at its checkpoint")
        super().__init__(f"step {step_key} ran past its {timeout_s:g}s timeout; {how}")


class RunFinishedError(EngineError):
    """A command that needs an unfinished run (cancel) was given a finished one; nothing was
    written."""

    def __init__(self, run_id: UUID, status: str, action: str) -> None:
        self.run_id = run_id
        self.status = status
        super().__init__(f"run {run_id} is already {status}; there is nothing to {action}")


class CancelPendingError(EngineError):
    """A cancel was already asked for and its run's holder has not stopped yet."""

    def __init__(self, run_id: UUID, by: str, at: str) -> None:
        super().__init__(
            f"run {run_id}: a cancel was already requested by {by} at {at}; its holder stops "
            f"it at the next checkpoint or step boundary (`stepstone status {run_id}`)"
        )
