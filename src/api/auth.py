"""The optional bearer token: one check in front of every route but `/healthz`.

An ASGI middleware rather than a FastAPI dependency, so that `/docs`, `/openapi.json`, the
dashboard's static files and unknown paths are covered too, not only the API routes. A browser
cannot send an Authorization header when it navigates, so the same token is also accepted from
a `stepstone_token` cookie, which the 401 page sets from a form (and `EventSource` sends).

Missing and wrong tokens get the same 401. Both sides are hashed before a constant-time
compare, so neither the content nor the length of the token leaks through timing. Nothing here
logs a header or a cookie.
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import unquote

from pydantic import SecretStr
from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Receive, Scope, Send

COOKIE = "stepstone_token"
OPEN_PATHS = frozenset({"/healthz"})
_JSON_401 = b'{"detail":"a valid bearer token is required: send Authorization: Bearer <token>"}'
_LOGIN_PAGE = b"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>Stepstone - token required</title><meta name="viewport" content="width=device-width">
<style>body{font:15px system-ui,sans-serif;background:#0f1419;color:#d8dee6;display:grid;
place-items:center;height:100vh;margin:0}form{background:#182029;padding:24px 28px;
border-radius:8px;border:1px solid #2a3440}input,button{font:inherit;padding:6px 10px;
border-radius:4px;border:1px solid #2a3440;background:#0f1419;color:inherit}
button{background:#2f6fde;border-color:#2f6fde;color:#fff;cursor:pointer}</style></head>
<body><form id="f"><h2>Stepstone</h2><p>This server needs its API token.</p>
<input id="t" type="password" autocomplete="current-password" placeholder="token" autofocus>
<button>Open the dashboard</button></form><script>
document.getElementById("f").addEventListener("submit", function (e) {
  e.preventDefault();
  document.cookie = "stepstone_token=" + encodeURIComponent(document.getElementById("t").value)
    + "; path=/; SameSite=Strict";
  location.reload();
});</script></body></html>"""


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


class BearerTokenMiddleware:
    """Answers 401 unless the request carries the token (header or cookie)."""

    def __init__(self, app: ASGIApp, token: SecretStr) -> None:
        self.app = app
        self._expected = _digest(token.get_secret_value())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        wants_html = any(
            name == b"accept" and b"text/html" in value for name, value in scope["headers"]
        )
        body, kind = (_LOGIN_PAGE, b"text/html; charset=utf-8") if wants_html else (
            _JSON_401, b"application/json")
        await send({
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", kind),
                (b"content-length", str(len(body)).encode()),
                (b"www-authenticate", b'Bearer realm="stepstone"'),
                (b"cache-control", b"no-store"),
            ],
        })
        await send({"type": "http.response.body", "body": body})

    def _allowed(self, scope: Scope) -> bool:
        presented: str | None = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, credentials = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer":
                    presented = credentials.strip()
            elif name == b"cookie" and presented is None:
                cookie = cookie_parser(value.decode("latin-1")).get(COOKIE)
                if cookie is not None:
                    presented = unquote(cookie)
        if presented is None:
            # Compare anyway, so a missing token costs the same time as a wrong one.
            hmac.compare_digest(_digest(""), self._expected)
            return False
        return hmac.compare_digest(_digest(presented), self._expected)
