"""What routes get injected: the reads, the options, and the shared query parameters."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel

from api.models import ErrorBody
from api.queries import Reads
from api.security import LOOPBACK_HOSTS


@dataclass(frozen=True)
class ApiOptions:
    """How the API behaves; the CLI fills it from its flags, embedding code from anywhere.

    Kept apart from the engine's `Settings`, which holds what several parts share (the store
    URL, the token), so API knobs do not grow the engine's configuration.
    """

    max_page: int = 1000
    after_timeout_s: float = 5.0
    ready_max_lag: int = 10_000
    stream_poll_s: float = 0.5
    stream_ping_s: int = 15
    pool_size: int = 8
    read_threads: int = 4
    query_timeout_s: float = 5.0
    #: The Host names answered (DNS rebinding); `stepstone serve` derives them from --host.
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS


# Dependencies are `async def` although they do no I/O: FastAPI runs a plain `def` dependency
# in its thread pool, a thread hop per request each (measured: the largest cost of a read).
async def _reads(request: Request) -> Reads:
    reads: Reads = request.app.state.reads
    return reads


async def _options(request: Request) -> ApiOptions:
    options: ApiOptions = request.app.state.options
    return options


ReadsDep = Annotated[Reads, Depends(_reads)]
OptionsDep = Annotated[ApiOptions, Depends(_options)]

# No NUL: PostgreSQL text cannot hold one, and no real name or cursor contains one.
_TEXT = r"^[^\x00]*$"
Limit = Annotated[int, Query(ge=1, description="page size; larger values are capped")]
Cursor = Annotated[
    str | None, Query(max_length=512, pattern=_TEXT, description="next_cursor of the last page")
]
After = Annotated[
    int | None,
    Query(ge=0, le=2**62, description="wait (bounded) until the views include this log position"),
]
Name = Annotated[str | None, Query(max_length=512, pattern=_TEXT)]

ERRORS: dict[int | str, dict[str, object]] = {
    401: {"model": ErrorBody, "description": "a token is configured and was not sent"},
    422: {"model": ErrorBody, "description": "a parameter is not valid"},
    503: {"model": ErrorBody, "description": "the store or the views cannot answer yet"},
}
NOT_FOUND: dict[int | str, dict[str, object]] = {
    404: {"model": ErrorBody, "description": "no such run"},
}


def page_size(limit: int, options: ApiOptions) -> int:
    return min(limit, options.max_page)


F = TypeVar("F", bound=Callable[..., Any])


def read_route(router: APIRouter, path: str, **kwargs: Any) -> Callable[[F], F]:
    """Register a GET route, and HEAD on the same function outside the OpenAPI document.

    One route with both methods would give the document two operations with one id.
    """

    def register(fn: F) -> F:
        router.add_api_route(path, fn, methods=["GET"], **kwargs)
        router.add_api_route(path, fn, methods=["HEAD"], include_in_schema=False, **kwargs)
        return fn

    return register


def as_json(model: BaseModel) -> Response:
    """The model as a JSON answer, serialized once by pydantic-core.

    Returning the model itself would have FastAPI dump it and validate it again against the
    route's `response_model` (which stays declared, for the OpenAPI document): a model we
    built is valid already, and that second pass cost as much as the rest of a read.
    """
    return Response(model.model_dump_json(), media_type="application/json")
