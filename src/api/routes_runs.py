"""Runs: the list, one run, its step attempts (all from the views), its events (from the log)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated
from uuid import UUID

from eventsourcing.utils import get_topic
from fastapi import APIRouter, Query, Response

from api.deps import (
    ERRORS,
    NOT_FOUND,
    After,
    Cursor,
    Limit,
    Name,
    OptionsDep,
    ReadsDep,
    as_json,
    page_size,
    read_route,
)
from api.errors import ApiError
from api.freshness import wait_for_views
from api.models import EventPage, PublishedPage, RunDetail, RunPage, StepAttemptPage
from engine.audit.history import event_classes
from engine.status import RunStatus

router = APIRouter(tags=["runs"], responses=ERRORS)


def _missing(run_id: UUID) -> ApiError:
    return ApiError(
        404,
        f"no run {run_id} in the progress views; a run started moments ago appears once the "
        "projector has applied it (pass ?after=<position> to wait for that)",
    )


@read_route(router, "/runs", response_model=RunPage)
async def list_runs(
    reads: ReadsDep,
    options: OptionsDep,
    status: RunStatus | None = None,
    workflow: Name = None,
    started_after: Annotated[datetime | None, Query(description="inclusive")] = None,
    started_before: Annotated[datetime | None, Query(description="exclusive")] = None,
    cursor: Cursor = None,
    limit: Limit = 50,
    after: After = None,
) -> Response:
    """Runs, newest first, filtered by status, workflow and start time; cursor-paginated."""
    await wait_for_views(reads, after, ("runs",), options.after_timeout_s)
    page = await reads.off_loop(
        reads.list_runs,
        limit=page_size(limit, options),
        cursor=cursor,
        status=status.value if status else None,
        workflow=workflow,
        started_after=started_after,
        started_before=started_before,
    )
    return Response(page, media_type="application/json")


@read_route(router, "/runs/{run_id}", response_model=RunDetail, responses=NOT_FOUND)
async def get_run(
    run_id: UUID, reads: ReadsDep, options: OptionsDep, after: After = None,
    links: Annotated[bool, Query(description="read the run's parent and children off its log "
                                 "(false: skip it, for a quick re-read of the status)")] = True,
) -> Response:
    """One run: status, current step, progress, attempts, retries, interruptions, last error,
    and the runs it is linked with (its parent, its children)."""
    await wait_for_views(reads, after, ("runs",), options.after_timeout_s)
    read = reads.run_detail if links else reads.get_run
    run = await reads.off_loop(read, run_id)
    if run is None:
        raise _missing(run_id)
    return as_json(run)


@read_route(router, "/runs/{run_id}/steps", response_model=StepAttemptPage, responses=NOT_FOUND
)
async def run_steps(
    run_id: UUID,
    reads: ReadsDep,
    options: OptionsDep,
    cursor: Cursor = None,
    limit: Limit = 200,
    after: After = None,
) -> Response:
    """The run's step attempts in the order they started, with outcome, duration and error."""
    await wait_for_views(reads, after, ("step_attempts",), options.after_timeout_s)
    page = await reads.off_loop(reads.attempts_of, run_id, limit=page_size(limit, options),
                           cursor=cursor)
    if not page.items and cursor is None and await reads.off_loop(reads.get_run, run_id) is None:
        raise _missing(run_id)
    return as_json(page)


@read_route(router, "/runs/{run_id}/published", response_model=PublishedPage,
            responses=NOT_FOUND)
async def run_published(
    run_id: UUID,
    reads: ReadsDep,
    options: OptionsDep,
    cursor: Cursor = None,
    limit: Limit = 200,
    after: After = None,
) -> Response:
    """The latest value the run `publish`ed for each key, by key (before the run ends too)."""
    await wait_for_views(reads, after, ("published", "runs"), options.after_timeout_s)
    page = await reads.off_loop(reads.published_of, run_id, limit=page_size(limit, options),
                                cursor=cursor)
    if not page.items and cursor is None and await reads.off_loop(reads.get_run, run_id) is None:
        raise _missing(run_id)
    return as_json(page)


@read_route(router, "/runs/{run_id}/events", response_model=EventPage, responses=NOT_FOUND
)
async def run_events(
    run_id: UUID,
    reads: ReadsDep,
    options: OptionsDep,
    cursor: Cursor = None,
    limit: Limit = 200,
    after: After = None,
    before: Annotated[int | None, Query(
        ge=1, le=2**62, description="page backwards: the newest events before this version "
        "(a large number, e.g. 2^53-1, for the run's newest page)")] = None,
    type: Annotated[str | None, Query(
        max_length=512, pattern=r"^[A-Za-z]+(,[A-Za-z]+)*$",
        description="only events of these types, e.g. StepCheckpointed")] = None,
) -> Response:
    """The run's audit history straight from the event store: every field, global positions.

    Pages forwards from `cursor`, or backwards with `before`, one bounded page per request
    whatever the run's size. `after` is accepted for symmetry and only checked: the log is
    always up to date.
    """
    if after is not None and after > await reads.off_loop(reads.head):
        raise ApiError(422, f"position {after} is past the log's last position")
    try:
        topics = [get_topic(c) for c in event_classes(type.split(","))] if type else []
    except ValueError as e:
        raise ApiError(422, str(e)) from None
    page = await reads.off_loop(reads.events_of, run_id, limit=page_size(limit, options),
                                cursor=cursor, before=before, topics=topics)
    if page is None:
        raise ApiError(404, f"no run {run_id} in the event store; `stepstone runs` lists them")
    return as_json(page)
