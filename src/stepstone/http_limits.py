"""A deadline on reading a request's headers, which uvicorn does not have.

uvicorn closes an idle keep-alive connection (`timeout_keep_alive`) and answers 503 past
`limit_concurrency` connections, but a connection that sends nothing, or trickles its headers
a byte at a time, is held for as long as the client likes: a hundred of them hold the server's
connection budget with no token. This subclass of uvicorn's own protocol arms a timer when a
connection opens and when each request begins, disarms it once the headers are in, and answers
408 and closes when it fires.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_408 = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
        b"content-length: 28\r\nconnection: close\r\n\r\nrequest headers came too slow")


class HeaderDeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with `header_timeout_s` to deliver each request's headers."""

    header_timeout_s: float = 5.0
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._deadline is None:
            self._deadline = self.loop.call_later(self.header_timeout_s, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.write(_408)
            self.transport.close()


def with_header_timeout(seconds: float) -> type[HeaderDeadlineProtocol]:
    """The protocol class to give uvicorn's `http=` for this deadline."""
    return type("HeaderDeadline", (HeaderDeadlineProtocol,), {"header_timeout_s": seconds})
