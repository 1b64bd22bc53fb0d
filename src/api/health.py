"""Liveness (`/healthz`, always open), readiness (store reachable, views not too far behind)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.deps import ERRORS, OptionsDep, ReadsDep, read_route
from api.models import Health, Readiness, ViewLag
from api.readonly_store import StoreReadError

router = APIRouter(tags=["health"])


@read_route(router, "/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is up; says nothing of the store (see /readyz)."""
    return Health(status="ok")


@read_route(router, "/readyz", response_model=Readiness,
    responses={**ERRORS, 503: {"model": Readiness, "description": "not ready, and why"}},
)
async def readyz(reads: ReadsDep, options: OptionsDep) -> Readiness | JSONResponse:
    """The store answers and every view is within `ready_max_lag` events of the log's head."""
    try:
        head = await reads.off_loop(reads.head)
        positions = await reads.off_loop(reads.positions)
    except StoreReadError as e:
        where = "views not built yet" if e.missing_table else e.reason
        body = Readiness(ready=False, store=f"unreachable: {where}", head=None,
                         max_lag=options.ready_max_lag, views=[])
        return JSONResponse(body.model_dump(mode="json"), status_code=503)
    views = [ViewLag(view=v, position=p, lag=max(0, head - p)) for v, p in positions.items()]
    ready = all(v.lag <= options.ready_max_lag for v in views)
    body = Readiness(ready=ready, store="reachable", head=head,
                     max_lag=options.ready_max_lag, views=views)
    if not ready:
        return JSONResponse(body.model_dump(mode="json"), status_code=503)
    return body
