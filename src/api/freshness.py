"""`?after=<position>`: a read that waits, bounded, until the views have reached a position.

A client that saw an event at position N (a run's `last_position`, an event page) asks for
views that include it, and gets them as soon as the projector has applied it: read your
writes, on a read side that is eventually consistent.
"""

from __future__ import annotations

import time

import anyio

from api.errors import ApiError
from api.queries import Reads

_POLL_S = 0.02


async def wait_for_views(
    reads: Reads, after: int | None, views: tuple[str, ...], timeout_s: float
) -> None:
    """Return once every view in `views` is at `after` or later; raise 422/503 otherwise."""
    if after is None:
        return
    deadline = time.monotonic() + timeout_s
    while True:
        positions = await reads.off_loop(reads.positions)
        lowest = min(positions[v] for v in views)
        if lowest >= after:
            return
        head = await reads.off_loop(reads.head)
        if after > head:
            raise ApiError(
                422, f"position {after} is past the log's last position {head}: "
                "pass a position this API or the engine reported"
            )
        if time.monotonic() >= deadline:
            raise ApiError(
                503,
                f"the views are at position {lowest} and did not reach {after} within "
                f"{timeout_s:g} s: is the projector running? See /readyz",
                {"Retry-After": "1"},
            )
        await anyio.sleep(_POLL_S)
