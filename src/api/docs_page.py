"""`/docs`: Swagger UI from files installed with the package, so it works with no internet.

FastAPI's own `/docs` loads Swagger UI from a CDN: blank offline, and a third party's script
on a page that can read the API. The assets come from `fastapi-offline`, which ships a
current Swagger UI build; its app factory is not used, only its files. The page's one inline
script is allowed by its hash rather than by `'unsafe-inline'`.
"""

from __future__ import annotations

import base64
import hashlib
import re
from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = Path(str(files("fastapi_offline") / "static"))
ASSETS_URL = "/docs-assets"
_INLINE_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.S)


def _csp_for(page: bytes) -> str:
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(script).digest()).decode() + "'"
        for script in _INLINE_SCRIPT.findall(page)
    )
    # Swagger UI sets inline styles and draws its icons from data: URLs.
    return (
        f"default-src 'none'; script-src 'self' {hashes}; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )


def install(app: FastAPI) -> None:
    """Serve Swagger UI at `/docs` from the installed assets (the app has `docs_url=None`)."""
    page = bytes(get_swagger_ui_html(
        openapi_url=app.openapi_url or "/openapi.json",
        title=f"{app.title} API",
        swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
        swagger_favicon_url=f"{ASSETS_URL}/favicon.png",
        oauth2_redirect_url=None,
    ).body)
    headers = {"Content-Security-Policy": _csp_for(page)}

    @app.api_route("/docs", methods=["GET", "HEAD"], include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(page, headers=headers)

    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS), name="docs-assets")
