"""The optional bearer token: one check in front of every route that reads runs.

An ASGI middleware rather than a FastAPI dependency, so that unknown paths and routes the
framework adds itself are covered too, not only the API routes.

The token is accepted from the `Authorization` header only. A cookie would be readable by, and
sent to, every other server on the same host (cookies are not separated by port), which is
exactly where a loopback-bound server's neighbours live. The dashboard keeps the token in
`sessionStorage` (one origin, one tab) and sends it as a header, its event streams included.
That is why the shell the browser navigates to (the dashboard's page and files, the
vocabulary it loads first, the API docs page and its assets, the OpenAPI document) is open: it
holds no run data, and a browser cannot put a header on a navigation.

Missing and wrong tokens get the same 401. Both sides are hashed before a constant-time
compare, so neither the content nor the length of the token leaks through timing. Nothing here
logs a header.
"""

from __future__ import annotations

import hashlib
import hmac

from pydantic import SecretStr
from starlette.types import ASGIApp, Receive, Scope, Send

#: Paths that hold no run data: health, and what a browser loads before it can send a header.
OPEN_PATHS = frozenset({"/healthz", "/", "/docs", "/openapi.json", "/vocabulary.json"})
OPEN_PREFIXES = ("/static/", "/docs-assets/")
_JSON_401 = b'{"detail":"a valid bearer token is required: send Authorization: Bearer <token>"}'


class ApiConfigError(ValueError):
    """The API's configuration cannot be served safely; the message says what to change."""


def checked_token(token: SecretStr | None) -> SecretStr | None:
    """The token to require, or None; a blank one is an error, not a way to turn auth off."""
    if token is None:
        return None
    if not token.get_secret_value().strip():
        raise ApiConfigError(
            "STEPSTONE_API_TOKEN is set but empty: set it to a token, or unset it to serve "
            "without one"
        )
    return token


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


def is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


class BearerTokenMiddleware:
    """Answers 401 unless the request carries the token in its Authorization header."""

    def __init__(self, app: ASGIApp, token: SecretStr) -> None:
        self.app = app
        self._expected = _digest(token.get_secret_value())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_open(scope["path"]) or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        await send({
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(_JSON_401)).encode()),
                (b"www-authenticate", b'Bearer realm="stepstone"'),
                (b"cache-control", b"no-store"),
            ],
        })
        await send({"type": "http.response.body", "body": _JSON_401})

    def _allowed(self, scope: Scope) -> bool:
        presented: str | None = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, credentials = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer":
                    presented = credentials.strip()
        if presented is None:
            # Compare anyway, so a missing token costs the same time as a wrong one.
            hmac.compare_digest(_digest(""), self._expected)
            return False
        return hmac.compare_digest(_digest(presented), self._expected)
