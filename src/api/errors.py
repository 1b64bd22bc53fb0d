"""Errors as short JSON bodies: a client learns what was wrong, never sees a stack trace."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.queries import InvalidCursorError, InvalidQueryError
from api.readonly_store import StoreReadError

log = logging.getLogger("stepstone.api")


class ApiError(Exception):
    """An answer other than 200 that a route decided on, with a message for the client."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.detail = detail
        self.headers = headers
        super().__init__(detail)


def error(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def install(app: FastAPI) -> None:
    """Register the handlers that turn every failure into a short JSON answer."""

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error(exc.status, exc.detail, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default echoes the whole input back; one line per problem is enough.
        problems = []
        for e in exc.errors()[:5]:
            where = ".".join(str(p) for p in e.get("loc", ()) if p not in ("query", "path"))
            problems.append(f"{where or 'request'}: {e.get('msg', 'invalid')}")
        return error(422, "invalid request: " + "; ".join(problems))

    @app.exception_handler(InvalidCursorError)
    async def bad_cursor(_: Request, exc: InvalidCursorError) -> JSONResponse:
        return error(422, "invalid cursor: pass back a next_cursor this API returned, unchanged")

    @app.exception_handler(InvalidQueryError)
    async def bad_query(_: Request, exc: InvalidQueryError) -> JSONResponse:
        return error(422, f"invalid request: {exc}")

    @app.exception_handler(StoreReadError)
    async def store_down(_: Request, exc: StoreReadError) -> JSONResponse:
        if exc.missing_table:
            detail = (
                "the progress views are not built yet: run `stepstone projections run` "
                "(or `stepstone serve` without --no-projector)"
            )
        else:
            detail = f"the store cannot be read right now ({exc.reason}); see /readyz"
        log.warning("store read failed: %s", exc.reason)
        return error(503, detail, {"Retry-After": "1"})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return error(500, "internal error; the server log has the details")
