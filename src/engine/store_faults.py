"""The retry budget of one drive for store faults (a failed or uncertain save).

After such a save the driver writes nothing more from its copy of the run; the engine reloads
the run from the log and drives it again, waiting between tries, for a bounded time.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from uuid import UUID

from engine.driver import utc_now
from engine.errors import StoreUnavailableError
from engine.logcontext import get_logger
from engine.preemption import PreemptionToken

log = get_logger("stepstone.engine")


class StoreFaults:
    """The retry budget of one drive for store faults: exponential backoff from 0.2 s to 5 s,
    for `budget_s` from the first fault, cut short by a preemption request. A reload that
    finds the run further on than the last one starts afresh: flaky connections that let the
    run progress between faults never exhaust it; a store that stays down does."""

    def __init__(self, budget_s: float, token: PreemptionToken) -> None:
        self.budget_s = budget_s
        self.token = token
        self.first: float | None = None
        self.delay_s = 0.0
        self.version = 0

    def loaded(self, version: int) -> None:
        if version > self.version:
            self.version = version
            self.first, self.delay_s = None, 0.0

    def retry(self, run_id: UUID, error: StoreUnavailableError) -> bool:
        """Wait before the next try and say True, or say False: give up."""
        now = time.monotonic()
        if self.first is None:
            self.first = now
        self.delay_s = min(max(self.delay_s * 2, 0.2), 5.0)
        if self.token.requested or now + self.delay_s - self.first > self.budget_s:
            return False
        log.warning(
            "run %s: a save failed or may have failed (%s); nothing more is written from "
            "that copy. Reloading it from the log in %.1fs", run_id, error.reason, self.delay_s,
        )
        return not self.token.wait(self.delay_s)

    def due_again(self) -> datetime:
        """When a worker should try the run again: after one more backoff, never at once."""
        return utc_now() + timedelta(seconds=max(self.delay_s, 1.0))
