"""Server-Sent Events: progress pushed to the dashboard (or any client) as it is projected.

The views are polled, not the log: what a client is told is what the views hold, so a stream
and a GET never disagree. One poll is a primary-key read (`/runs/{id}/stream`) or an index
range on `last_position` (`/stream`), cheap enough for a dashboard per operator.
`sse-starlette` does the protocol: framing, keep-alive pings, disconnects, server shutdown.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import anyio
from fastapi import APIRouter, Request
from sse_starlette import EventSourceResponse

from api.deps import ERRORS, NOT_FOUND, OptionsDep, ReadsDep
from api.errors import ApiError
from api.models import Run
from engine.status import TERMINAL

router = APIRouter(tags=["streams"], responses=ERRORS)
_STREAM_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "text/event-stream of `run` events (data: a Run as JSON)",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}


def _sse(run: Run) -> dict[str, str]:
    return {"event": "run", "id": str(run.last_position or 0), "data": run.model_dump_json()}


@router.get(
    "/runs/{run_id}/stream",
    response_class=EventSourceResponse,
    responses={**NOT_FOUND, **_STREAM_DOC},
)
async def stream_run(
    run_id: UUID, request: Request, reads: ReadsDep, options: OptionsDep
) -> EventSourceResponse:
    """The run now, then again each time the views change it; an `end` event once it is done."""
    first = await reads.off_loop(reads.get_run, run_id)
    if first is None:
        raise ApiError(404, f"no run {run_id} in the progress views")

    async def events() -> AsyncIterator[dict[str, str]]:
        run: Run | None = first
        last: int | None = None
        while run is not None:
            if run.last_position != last:
                last = run.last_position
                yield _sse(run)
                if run.status in TERMINAL:
                    yield {"event": "end", "data": run.status.value}
                    return
            if await request.is_disconnected():
                return
            await anyio.sleep(options.stream_poll_s)
            run = await reads.off_loop(reads.get_run, run_id)

    return EventSourceResponse(events(), ping=options.stream_ping_s)


@router.get("/stream", response_class=EventSourceResponse, responses=_STREAM_DOC)
async def stream_runs(
    request: Request, reads: ReadsDep, options: OptionsDep
) -> EventSourceResponse:
    """Every run the views change from now on, as `run` events (what the runs list shows)."""
    start = (await reads.off_loop(reads.positions))["runs"]

    async def events() -> AsyncIterator[dict[str, str]]:
        position = start
        yield {"event": "position", "data": str(position)}
        while not await request.is_disconnected():
            changed = await reads.off_loop(reads.changed_runs, position, 500)
            for run in changed:
                position = max(position, run.last_position or 0)
                yield _sse(run)
            if len(changed) < 500:
                await anyio.sleep(options.stream_poll_s)

    return EventSourceResponse(events(), ping=options.stream_ping_s)
