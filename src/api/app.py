"""The app factory: settings in, a read-only FastAPI app out. The composition root of `api`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Response
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import errors, health, routes_runs, routes_stats, stream
from api.auth import BearerTokenMiddleware
from api.deps import ApiOptions, read_route
from api.metrics import LatencyMiddleware, new_registry
from api.queries import Reads
from api.readonly_store import open_read_only
from engine.settings import Settings
from engine.store_url import parse_store_url

DASHBOARD = Path(str(files("api") / "dashboard"))
# The dashboard loads only its own files and talks only to this server.
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def create_app(settings: Settings, options: ApiOptions | None = None) -> FastAPI:
    """A read-only API over the views and the log named by `settings.database_url`.

    Nothing connects until the first request, so the app starts (and `/healthz` answers)
    while the database is still coming up.
    """
    options = options or ApiOptions()
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
        redoc_url=None,  # /docs is enough; one fewer page loading scripts from a CDN
    )
    app.state.reads = reads
    app.state.options = options
    errors.install(app)
    for module in (routes_runs, routes_stats, stream, health):
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
        return FileResponse(DASHBOARD / "index.html", headers={"Content-Security-Policy": _CSP})

    app.mount("/static", StaticFiles(directory=DASHBOARD), name="static")
    # Outermost first at run time: headers, then auth (so a 401 is timed too), then timing.
    app.add_middleware(LatencyMiddleware, histogram=latency)
    token = settings.api_token
    if token is not None and token.get_secret_value():
        app.add_middleware(BearerTokenMiddleware, token=token)
    app.add_middleware(SecurityHeadersMiddleware)
    return app


class SecurityHeadersMiddleware:
    """Headers every answer carries: no sniffing, no framing, no referrer, no caching."""

    _HEADERS = (
        (b"x-content-type-options", b"nosniff"),
        (b"x-frame-options", b"DENY"),
        (b"referrer-policy", b"no-referrer"),
    )

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.extend(self._HEADERS)
                if not any(name == b"cache-control" for name, _ in headers):
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)
