"""The preemption token: asks a driver to finish its current unit, persist, and stop.

SIGTERM and the first Ctrl-C set it; a second Ctrl-C raises KeyboardInterrupt to force exit.
Forcing loses no recorded data: every event is written in an atomic commit, so the most a forced
exit costs is re-running the unit that was in flight.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType


class PreemptionToken:
    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""

    def request(self, reason: str = "preemption requested") -> None:
        if not self._event.is_set():
            self.reason = reason
            self._event.set()

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout_s: float) -> bool:
        """Sleep up to `timeout_s`; True as soon as preemption is requested."""
        return self._event.wait(timeout_s)

    def clear(self) -> None:
        self._event.clear()
        self.reason = ""


class Preempted(BaseException):
    """Unwinds step and workflow code after progress was persisted.

    A BaseException so that a user's `except Exception` does not swallow it.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@contextmanager
def signals_request_preemption(
    token: PreemptionToken, on_first: Callable[[str], None] | None = None
) -> Iterator[PreemptionToken]:
    """Route SIGTERM/SIGINT to `token` while the block runs (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield token
        return

    def handler(signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if token.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if not token.requested:
            token.request(f"{name} received")
            if on_first is not None:
                on_first(name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield token
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
