"""The browser-facing defences: which `Host` names are answered, and the headers on every answer.

The host check is against DNS rebinding: a page on `rebind.attacker.example` whose name is
made to resolve to 127.0.0.1 talks to a loopback server as its own origin, so the browser
lets it read every answer. It cannot make the browser send a `Host` header other than its own
name, so answering only to the names the server is reached by defeats it. Starlette's
`TrustedHostMiddleware` does the matching (400 for any other name); this module only works
out the list.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
_WILDCARDS = frozenset({"", "0.0.0.0", "::", "[::]"})  # noqa: S104  (names, not a bind)

# The dashboard loads only its own files and talks only to this server.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def as_host(name: str) -> str:
    """How `name` appears in a Host header: IPv6 addresses in brackets, lower case."""
    name = name.strip().lower()
    try:
        if ipaddress.ip_address(name.strip("[]")).version == 6:
            return f"[{name.strip('[]')}]"
    except ValueError:
        pass
    return name


def is_loopback(bind: str) -> bool:
    if bind.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(bind.strip("[]")).is_loopback
    except ValueError:
        return False


def _this_machine() -> list[str]:
    """The names and addresses a wildcard-bound server is reached by, as far as we can tell."""
    names = {socket.gethostname(), socket.getfqdn()}
    try:
        for *_, sockaddr in socket.getaddrinfo(socket.gethostname(), None):
            names.add(str(sockaddr[0]))
    except OSError:
        pass
    return sorted(as_host(n) for n in names if n)


def allowed_hosts(bind: str, extra: Iterable[str] = ()) -> list[str]:
    """The Host names a server bound to `bind` answers to, plus the operator's `extra`.

    Loopback: the loopback names. A wildcard (0.0.0.0, ::): those, this machine's name and
    addresses. A named interface: that name. `*` in `extra` turns the check off.
    """
    hosts: list[str] = []
    if is_loopback(bind) or bind.strip() in _WILDCARDS:
        hosts += LOOPBACK_HOSTS
    if bind.strip() in _WILDCARDS:
        hosts += _this_machine()
    elif bind.strip():
        hosts.append(as_host(bind))
    hosts += [as_host(h) if h != "*" else h for h in extra if h.strip()]
    return list(dict.fromkeys(hosts))


class SecurityHeadersMiddleware:
    """Headers every answer carries: no sniffing, no framing, no referrer, no caching, and a
    Content-Security-Policy unless the route set its own (the docs page does)."""

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
                names = {name.lower() for name, _ in headers}
                if b"cache-control" not in names:
                    headers.append((b"cache-control", b"no-store"))
                if b"content-security-policy" not in names:
                    headers.append((b"content-security-policy", CSP.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)
