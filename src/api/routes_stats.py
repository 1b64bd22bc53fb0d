"""Statistics per workflow, and the hotspots table: where work gets interrupted."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import ERRORS, After, Limit, Name, OptionsDep, ReadsDep, page_size, read_route
from api.freshness import wait_for_views
from api.models import HotspotList, WorkflowList

router = APIRouter(tags=["statistics"], responses=ERRORS)


@read_route(router, "/workflows", response_model=WorkflowList)
def workflows(reads: ReadsDep, options: OptionsDep, after: After = None) -> WorkflowList:
    """Per workflow: runs by status and p50/p95 durations of completed runs."""
    wait_for_views(reads, after, ("workflow_stats",), options.after_timeout_s)
    return WorkflowList(items=reads.workflow_stats())


@read_route(router, "/hotspots", response_model=HotspotList)
def hotspots(
    reads: ReadsDep,
    options: OptionsDep,
    workflow: Name = None,
    limit: Limit = 100,
    after: After = None,
) -> HotspotList:
    """Steps by interruptions (preemptions + crashes), then failures: where to look first."""
    wait_for_views(reads, after, ("hotspots",), options.after_timeout_s)
    return HotspotList(items=reads.hotspot_rows(workflow=workflow,
                                                limit=page_size(limit, options)))
