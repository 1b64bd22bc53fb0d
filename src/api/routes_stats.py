"""Statistics per workflow, and the hotspots table: where work gets interrupted."""

from __future__ import annotations

from fastapi import APIRouter, Response

from api.deps import (
    ERRORS,
    After,
    Limit,
    Name,
    OptionsDep,
    ReadsDep,
    as_json,
    page_size,
    read_route,
)
from api.freshness import wait_for_views
from api.models import HotspotList, WorkflowList

router = APIRouter(tags=["statistics"], responses=ERRORS)


@read_route(router, "/workflows", response_model=WorkflowList)
async def workflows(reads: ReadsDep, options: OptionsDep, after: After = None) -> Response:
    """Per workflow: runs by status and p50/p95 durations of completed runs."""
    await wait_for_views(reads, after, ("workflow_stats",), options.after_timeout_s)
    return as_json(WorkflowList(items=await reads.off_loop(reads.workflow_stats)))


@read_route(router, "/hotspots", response_model=HotspotList)
async def hotspots(
    reads: ReadsDep,
    options: OptionsDep,
    workflow: Name = None,
    limit: Limit = 100,
    after: After = None,
) -> Response:
    """Steps by interruptions (preemptions + crashes), then failures: where to look first."""
    await wait_for_views(reads, after, ("hotspots",), options.after_timeout_s)
    items = await reads.off_loop(reads.hotspot_rows, workflow=workflow,
                            limit=page_size(limit, options))
    return as_json(HotspotList(items=items))
