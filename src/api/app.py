"""The app factory: settings in, a read-only FastAPI app out. The composition root of `api`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources import files
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Response
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.middleware.trustedhost import TrustedHostMiddleware

from api import docs_page, errors, health, routes_runs, routes_stats, stream, vocabulary
from api.auth import OPEN_PATHS, BearerTokenMiddleware, checked_token
from api.deps import ApiOptions, read_route
from api.metrics import LatencyMiddleware, new_registry
from api.queries import Reads
from api.readonly_store import open_read_only
from api.security import SecurityHeadersMiddleware
from api.settings import ApiSettings
from engine.settings import Settings
from engine.storage import parse_store_url

DASHBOARD = Path(str(files("api") / "dashboard"))


def create_app(
    settings: Settings, options: ApiOptions | None = None, *, api: ApiSettings | None = None
) -> FastAPI:
    """A read-only API over the views and the log named by `settings.database_url`.

    `api` holds the HTTP settings (the token); without it they are read from the
    environment. Nothing connects until the first request, so the app starts (and `/healthz`
    answers) while the database is still coming up. Raises `ApiConfigError` for a blank token.
    """
    options = options or ApiOptions()
    token = checked_token((api or ApiSettings()).api_token)
    location = parse_store_url(
        settings.database_url, connect_timeout_s=settings.connect_timeout_s
    )
    store = open_read_only(location, timeout_s=options.query_timeout_s,
                           pool_size=options.pool_size)
    reads = Reads(store, threads=options.read_threads)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        store.close()

    app = FastAPI(
        title="Stepstone",
        summary="Read-only progress of durable workflow runs",
        version="1",
        lifespan=lifespan,
        docs_url=None,  # FastAPI's /docs loads Swagger UI from a CDN; docs_page serves it
        redoc_url=None,
    )
    app.state.reads = reads
    app.state.options = options
    errors.install(app)
    docs_page.install(app)
    for module in (routes_runs, routes_stats, stream, health, vocabulary):
        app.include_router(module.router)
    registry, latency = new_registry(reads)

    @read_route(app.router, "/metrics", tags=["health"], response_class=Response,
                responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
    async def metrics() -> Response:
        """Prometheus text: runs by status, step outcomes, projection lag, request latency."""
        text = await reads.off_loop(generate_latest, registry)
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def dashboard() -> FileResponse:
        return FileResponse(DASHBOARD / "index.html")

    app.mount("/static", StaticFiles(directory=DASHBOARD), name="static")
    # The last added runs first: headers on every answer, then timing (so refusals are
    # counted in /metrics too), then the host check, then the token.
    if token is not None:
        app.add_middleware(BearerTokenMiddleware, token=token)
        _declare_bearer(app)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(options.allowed_hosts),
                       www_redirect=False)
    app.add_middleware(LatencyMiddleware, histogram=latency)
    app.add_middleware(SecurityHeadersMiddleware)
    return app


def _declare_bearer(app: FastAPI) -> None:
    """Put the bearer scheme in the OpenAPI document, so /docs offers "Authorize"."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        doc = build()  # FastAPI caches it; adding to it once is enough
        doc.setdefault("components", {}).setdefault(
            "securitySchemes", {"bearer": {"type": "http", "scheme": "bearer"}})
        doc.setdefault("security", [{"bearer": []}])
        for path in OPEN_PATHS & set(doc["paths"]):
            for operation in doc["paths"][path].values():
                operation["security"] = []  # open even with a token
        return doc

    app.openapi = openapi  # type: ignore[method-assign]
