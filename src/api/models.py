"""What the API answers, as pydantic models: the HTTP contract, kept apart from view rows.

A view's columns can change with a release of the projections; these models change only on
purpose, and the OpenAPI document is generated from them. The run statuses are the engine's
own (`engine.status.RunStatus`): a status added there appears here, in the OpenAPI enum and in
the per-status counts of `WorkflowStats`, with nothing to restate.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

# The engine's enums, not copies, so the OpenAPI document's enums are the engine's.
from engine.status import RECORDED, RunStatus, StepStatus


class StepOutcome(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    PREEMPTED = "preempted"
    CRASHED = "crashed"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True)


class ErrorInfo(_Model):
    """The latest error of a run: a failed step attempt (kept after a successful retry)."""

    type: str | None
    message: str | None
    step: str | None


class Progress(_Model):
    """The current step's last checkpoint that reported a total."""

    done: int | None
    total: int


class Run(_Model):
    """One run as the runs view holds it."""

    run_id: UUID
    workflow: str
    workflow_version: int
    status: RunStatus
    current_step: str | None = Field(description="key of the step in flight, if any")
    current_step_status: str | None = Field(
        description="running, failed (waiting for a retry or given up), preempted, or "
        "waiting (a durable sleep)"
    )
    steps_done: int
    steps_started: int
    steps_expected: int | None = Field(
        None,
        description="how many steps the run is expected to take: the steps of the latest "
        "completed run of this workflow version (its own when completed); null until one "
        "has completed. Workflow code is not declared up front, so this is a yardstick.",
    )
    progress: Progress | None
    attempts: int
    retries: int = Field(description="attempts after a step's first, for any reason")
    preemptions: int
    crashes: int = Field(description="attempts whose worker died before recording an end")
    interruptions: int = Field(description="preemptions + crashes")
    worker: str | None
    started_at: datetime | None
    updated_at: datetime | None
    finished_at: datetime | None
    last_error: ErrorInfo | None
    last_position: int | None = Field(description="global log position of the run's last event")
    held_by: str | None = Field(
        None, description="the live process driving the run now (its lease), if any")
    last_seen_at: datetime | None = Field(
        None, description="for an interrupted run (the log says running, but no live "
        "process holds its lease): when it was last seen alive")


class RunDetail(Run):
    """One run, with its links to the runs it belongs with (read from its log)."""

    parent_run_id: UUID | None = Field(
        None, description="the run that started this one as its child (`child()`), if any")
    children: list[UUID] = Field(
        default_factory=list, description="the child runs this run started, in call order "
        "(the first 1,000)")


class RunPage(_Model):
    items: list[Run]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page")


class StepAttempt(_Model):
    """One attempt of one step of a run."""

    step_key: str
    step_name: str | None
    attempt: int
    worker: str | None
    started_at: datetime | None
    ended_at: datetime | None
    outcome: StepOutcome | None
    duration_s: float | None
    error_type: str | None
    error_message: str | None


class StepAttemptPage(_Model):
    run_id: UUID
    items: list[StepAttempt]
    next_cursor: str | None


class PublishedValue(_Model):
    """A run's latest value for one key it `publish`ed (docs/messages.md)."""

    key: str
    value: Any
    step_key: str
    published_at: datetime
    position: int


class PublishedPage(_Model):
    run_id: UUID
    items: list[PublishedValue] = Field(description="by key")
    next_cursor: str | None


class Event(_Model):
    """One event of a run, straight from the log: its global position and every field."""

    position: int
    version: int
    timestamp: datetime
    event_type: str
    worker_id: str
    fields: dict[str, Any]


class EventPage(_Model):
    run_id: UUID
    items: list[Event]
    next_cursor: str | None = Field(
        description="the position after the last event returned: pass it as ?cursor= for the "
        "next page, or later to get events recorded since (the log grows)"
    )
    more: bool = Field(description="whether more events were already there past this page")


class WorkflowStats(_Model):
    """Per workflow: its runs by status, and durations of the completed ones."""

    workflow: str
    runs: int
    # One count per status of the engine, in its order: a field per status rather than a map,
    # so clients read `completed` as before. (Annotations written into the class body while
    # it is built are fields like any other to pydantic.)
    for _status in RECORDED:  # `interrupted` is observed at read time, never counted here
        __annotations__[_status.value] = int
    del _status
    duration_p50_s: float | None
    duration_p95_s: float | None


class WorkflowList(_Model):
    items: list[WorkflowStats]


class Hotspot(_Model):
    """Per workflow and step: how often its attempts were interrupted or failed."""

    workflow: str
    step_name: str
    attempts: int
    retries: int
    failures: int
    preemptions: int
    crashes: int
    invalidated: int = Field(description="resumes that did not trust the step's last "
                             "checkpoint (fell back, restarted or rejected)")
    interruptions: int = Field(description="preemptions + crashes, the sort key")


class HotspotList(_Model):
    items: list[Hotspot]


class Health(_Model):
    status: str


class ViewLag(_Model):
    view: str
    position: int
    lag: int


class Readiness(_Model):
    ready: bool
    store: str = Field(description="'reachable' or why it is not")
    head: int | None = Field(description="the log's last position")
    max_lag: int = Field(description="the lag past which the API reports not ready")
    views: list[ViewLag]


class ErrorBody(_Model):
    detail: str


class StatusInfo(_Model):
    """One run status of the engine."""

    name: RunStatus
    terminal: bool = Field(description="nothing follows the event that ends a run in it")
    observed: bool = Field(
        False, description="no event records it: the API reads it off the run's lease at "
        "that moment (`interrupted`: the log says running, no live process holds the run)")
    leased: bool = Field(
        False, description="true of a run only while a live process holds it: a reader "
        "re-reads such a run, since a holder's death records no event")


class EventInfo(_Model):
    """One event type of the engine's log."""

    name: str = Field(description="the event_type of /runs/{run_id}/events")
    status_after: RunStatus | None = Field(
        description="the status a run takes on this event; null: it keeps its status"
    )


class Vocabulary(_Model):
    """The names the answers of this API use, in the engine's order."""

    run_statuses: list[StatusInfo]
    step_statuses: list[StepStatus]
    events: list[EventInfo]
