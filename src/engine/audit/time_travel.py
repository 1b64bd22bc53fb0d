"""Time travel: a run's state as it was at one version or one moment, by replaying its events.

It is the state the engine itself decided from at that point: the same aggregate, loaded by
the library's repository up to that version (from the nearest snapshot at or below it).
Nothing is executed and nothing is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from engine.aggregate import WorkflowRun
from engine.errors import EngineError
from engine.status import StepStatus
from engine.store import RunStore


class NoSuchPointError(EngineError):
    """The version or time asked for is not in the run's history."""


def version_at(store: RunStore, run_id: UUID, moment: datetime) -> int:
    """The last version of the run recorded at or before `moment`."""
    if moment.tzinfo is None:
        raise NoSuchPointError(
            f"the time {moment.isoformat()} has no time zone; give it in UTC, e.g. "
            f"{moment.isoformat()}+00:00"
        )
    version = 0
    first: datetime | None = None
    for _, event in store.events_with_positions(run_id):
        first = first or event.timestamp
        if event.timestamp > moment:
            break
        version = event.originator_version
    if version == 0:
        raise NoSuchPointError(
            f"run {run_id} started at {first.isoformat() if first else '?'}, after "
            f"{moment.isoformat()}; give a later time"
        )
    return version


def state_at(store: RunStore, run_id: UUID, *, version: int) -> WorkflowRun:
    """The run as the engine saw it right after writing `version`."""
    latest = store.load(run_id)
    if not 1 <= version <= latest.version:
        raise NoSuchPointError(
            f"run {run_id} has versions 1 to {latest.version}; version {version} is not one"
        )
    return latest if version == latest.version else store.load(run_id, version=version)


@dataclass(frozen=True)
class Snapshot:
    """What a reader wants from a past state: steps by what they were doing then."""

    run_id: UUID
    version: int
    at: datetime
    status: str
    done: list[str]
    in_progress: list[str]
    retry_pending: list[dict[str, Any]]
    failed: list[str]
    last_checkpoint: dict[str, Any] | None
    output: Any
    error: dict[str, Any] | None
    patches: list[str]
    parked: dict[str, Any] | None


def describe(run: WorkflowRun) -> Snapshot:
    s = run.state
    steps = list(s.steps.values())
    checkpointed = [st for st in steps if st.checkpoint_sequence]
    last_cp = checkpointed[-1] if checkpointed else None
    return Snapshot(
        run_id=run.id,
        version=run.version,
        at=run.modified_on,
        status=s.status.value,
        done=[st.key for st in steps if st.status is StepStatus.COMPLETED],
        in_progress=[
            st.key for st in steps if st.status in (StepStatus.RUNNING, StepStatus.PREEMPTED)
        ],
        retry_pending=[
            {"step": st.key, "failures": st.failures,
             "next_attempt_at": st.next_attempt_at.isoformat() if st.next_attempt_at else None}
            for st in steps if st.status is StepStatus.FAILED and st.retryable
        ],
        failed=[st.key for st in steps if st.status is StepStatus.FAILED and not st.retryable],
        last_checkpoint=(
            {"step": last_cp.key, "sequence": last_cp.checkpoint_sequence,
             "state": last_cp.checkpoint}
            if last_cp else None
        ),
        output=s.output,
        error=s.error.model_dump() if s.error else None,
        patches=list(s.patches),
        parked=s.parked.model_dump() if s.parked else None,
    )
