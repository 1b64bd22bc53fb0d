"""Waiting between tries: the retry budget of one drive for store faults (a failed or uncertain
save), and the delay before a run whose drive hit an engine error is tried again.

After such a save the driver writes nothing more from its copy of the run; the engine reloads
the run from the log and drives it again, waiting between tries, for a bounded time.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta
from uuid import UUID

from engine.driver import utc_now
from engine.errors import StoreUnavailableError, StoreWriteError
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
        what = ("a save failed or may have failed" if isinstance(error, StoreWriteError)
                else "the store could not be read")  # a reload that failed in turn
        log.warning(
            "run %s: %s (%s); nothing more is written from that copy. Reloading it from the "
            "log in %.1fs", run_id, what, error.reason, self.delay_s,
        )
        return not self.token.wait(self.delay_s)

    def due_again(self) -> datetime:
        """When a worker should try the run again: after one more backoff, never at once."""
        return utc_now() + timedelta(seconds=max(self.delay_s, 1.0))


class ErrorBackoff:
    """Per run, how long to wait before driving it again after an engine error in its code:
    1 s, then doubling to 60 s while the error repeats; forgotten after a drive that ends
    without one. Kept by each process: N workers try a broken run at most about N times per
    delay, instead of claiming it again the moment it is handed back."""

    FIRST_S, MAX_S = 1.0, 60.0

    def __init__(self) -> None:
        self._delays: dict[UUID, float] = {}
        self._lock = threading.Lock()

    def due(self, run_id: UUID) -> datetime:
        with self._lock:
            delay = min(max(self._delays.get(run_id, 0.0) * 2, self.FIRST_S), self.MAX_S)
            self._delays[run_id] = delay
        return utc_now() + timedelta(seconds=delay)

    def clear(self, run_id: UUID) -> None:
        with self._lock:
            self._delays.pop(run_id, None)
