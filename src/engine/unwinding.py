"""Exceptions that unwind workflow and step code on the engine's behalf.

All are BaseExceptions, so user code that catches `Exception` (as real code does around I/O)
cannot swallow them or record them as its own failure. The driver raises them and catches
them at the top of a drive; fan-out ranks them when several branches stop at once.
"""

from __future__ import annotations

from datetime import datetime

from engine.errors import EngineError


class Abandon(BaseException):
    """Unwinds everything, writing nothing more from this in-memory run.

    Raised when the run is no longer this worker's to write (a conflict, a lost lease) and
    when a save failed or may have failed (a store fault): the aggregate has applied events
    the log may not hold, so any later write from it would leave a hole in the run's
    versions. The next drive reloads the run from the log. A BaseException, so step and
    workflow code that catches `Exception` cannot record it as its own failure.
    """

    def __init__(self, error: EngineError) -> None:
        self.error = error
        super().__init__(str(error))


class Halt(BaseException):
    """Unwinds user code for an engine error that leaves the run consistent (an unencodable
    checkpoint or return value): what is recorded so far is saved, the run stays resumable,
    and the error reaches the caller instead of being recorded as the step's failure."""

    def __init__(self, error: EngineError) -> None:
        self.error = error
        super().__init__(str(error))


class Suspend(BaseException):
    """Unwinds to `drive` so a worker can let the run wait (a timer, a retry) without holding
    a thread; everything recorded so far is saved first."""

    def __init__(self, due: datetime) -> None:
        self.due = due
        super().__init__(due.isoformat())
