"""Keeps this process's leases alive, and knows when one can no longer be trusted.

Each lease is valid locally until the last successful renewal plus the lease duration, minus
a safety margin; past that the driver stops before its next write (`check`). This matters for a
paused process (SIGSTOP, a long GC, a frozen VM): when it wakes, its monotonic clock tells it
the lease lapsed, before any heartbeat could. The log's optimistic concurrency is still the
real fence; this check only saves a doomed write.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from uuid import UUID

from engine.errors import EngineError, LeaseLostError
from engine.logcontext import get_logger
from engine.stopping import CancelRequest
from engine.workers.cancels import cancel_requests
from engine.workers.leases import LeaseStore

log = get_logger("stepstone.worker")


class LeaseKeeper:
    """Renews held leases every `interval_s`, and polls for cancel requests on the held runs
    every `cancel_poll_s` (engine.workers.cancels), so a driver sees one at its next
    checkpoint without a query of its own."""

    def __init__(
        self, leases: LeaseStore, owner: str, *, lease_s: float, interval_s: float,
        clock: Callable[[], float] = time.monotonic, cancel_poll_s: float = 1.0,
    ) -> None:
        """`clock` measures local validity (monotonic seconds); tests pass one they move."""
        if interval_s >= lease_s:
            raise ValueError(
                f"the heartbeat interval ({interval_s}s) must be shorter than the lease "
                f"({lease_s}s), or leases expire between heartbeats"
            )
        self.leases = leases
        self.owner = owner
        self.lease_s = lease_s
        self.interval_s = interval_s
        self.margin_s = min(lease_s * 0.2, 5.0)
        self.clock = clock
        self._valid_until: dict[UUID, float] = {}
        self._lost: dict[UUID, str] = {}
        self.cancel_poll_s = cancel_poll_s
        self._cancels: dict[UUID, CancelRequest] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._loop, name="stepstone-heartbeat", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval_s + 5)

    def hold(self, run_id: UUID, *, since: float | None = None) -> None:
        """Track a lease just taken (`since`: the monotonic time before it was taken)."""
        start = self.clock() if since is None else since
        with self._lock:
            self._valid_until[run_id] = start + self.lease_s - self.margin_s
            self._lost.pop(run_id, None)

    def drop(self, run_id: UUID) -> None:
        with self._lock:
            self._valid_until.pop(run_id, None)
            self._lost.pop(run_id, None)
            self._cancels.pop(run_id, None)

    def note_cancel(self, run_id: UUID, request: CancelRequest | None) -> None:
        """A request found when the run was taken (before the first poll)."""
        if request is not None:
            with self._lock:
                self._cancels[run_id] = request

    def cancel_requested(self, run_id: UUID) -> CancelRequest | None:
        """A cancel asked for this held run, as of the last poll (no query: a dict look-up,
        made at every checkpoint)."""
        return self._cancels.get(run_id)

    def poll_cancels(self) -> None:
        run_ids = self.held()
        if not run_ids:
            return
        found = cancel_requests(self.leases, run_ids)
        with self._lock:
            for run_id, request in found.items():
                if run_id in self._valid_until and run_id not in self._cancels:
                    log.info("run %s: cancel requested by %s (%s)", run_id, request.by,
                             request.reason)
                    self._cancels[run_id] = request

    def held(self) -> list[UUID]:
        with self._lock:
            return list(self._valid_until)

    def check(self, run_id: UUID) -> None:
        """Raise `LeaseLostError` unless this process may still write to `run_id`."""
        with self._lock:
            lost = self._lost.get(run_id)
            valid_until = self._valid_until.get(run_id, 0.0)
        if lost is not None:
            raise LeaseLostError(run_id, lost)
        if self.clock() > valid_until:
            raise LeaseLostError(
                run_id, f"not renewed for over {self.lease_s - self.margin_s:.0f}s (was this "
                "process paused, or the database unreachable?)"
            )

    def renew(self) -> None:
        """One heartbeat: extend every held lease; mark the ones another worker took."""
        run_ids = self.held()
        if not run_ids:
            return
        t0 = self.clock()
        kept = self.leases.heartbeat(self.owner, run_ids, self.lease_s)
        lost = []
        with self._lock:
            for run_id in run_ids:
                if run_id not in self._valid_until:
                    continue  # handed back meanwhile: not a loss
                if run_id in kept:
                    self._valid_until[run_id] = t0 + self.lease_s - self.margin_s
                else:
                    self._lost[run_id] = "another worker holds it now"
                    lost.append(run_id)
        for run_id in lost:
            log.warning("lost the lease on run %s: another worker holds it now", run_id)

    def _loop(self) -> None:
        tick = min(self.interval_s, self.cancel_poll_s)
        next_renewal = time.monotonic() + self.interval_s
        while not self._stop.wait(tick):
            if time.monotonic() >= next_renewal:
                next_renewal = time.monotonic() + self.interval_s
                try:
                    self.renew()
                except EngineError as e:
                    log.warning("heartbeat failed (will retry in %.1fs): %s",
                                self.interval_s, e)
            try:
                self.poll_cancels()
            except EngineError as e:
                log.debug("could not poll for cancel requests: %s", e)
