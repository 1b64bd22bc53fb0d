"""A worker: claims runnable runs from the index and drives each under a lease.

Many workers on many machines share one store and need no coordinator of their own: the
database serializes claims and holds the leases, and the log's optimistic concurrency fences
off a worker that lost its lease (DESIGN section 6).

Draining: when the engine's preemption token is set (SIGTERM), the worker stops claiming, its
runs stop at their next checkpoint or step boundary with progress saved, their leases are
handed back (due at once, so another worker resumes them right away), and `run` returns.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from uuid import UUID

from engine.audit.parking import park_crash_loop
from engine.driver import utc_now
from engine.engine import Engine
from engine.errors import (
    EngineError,
    LeaseLostError,
    NonDeterminismError,
    RunConflictError,
    StoreUnavailableError,
    WorkflowNotFoundError,
)
from engine.events import ResumeReason
from engine.logcontext import bound, get_logger
from engine.results import RunResult
from engine.schedules import fire_due
from engine.status import STOPPED, RunStatus
from engine.storage import listen
from engine.workers.leases import PARKED, READY, Claim, queue_scope

if TYPE_CHECKING:  # prometheus-client is the optional `metrics` extra
    from engine.workers.metrics import WorkerMetrics

log = get_logger("stepstone.worker")

# A worker without a workflow's code hands the run back for this long, so a worker that has
# the code gets it meanwhile.
_NO_CODE_BACKOFF_S = 30.0
_SWEEP_INTERVAL_S = 60.0
_TICKS_INTERVAL_S = 1.0  # how often a worker looks for due schedule ticks


@dataclass
class WorkerStats:
    """What this worker did, for its log line on exit (and for tests)."""

    claimed: int = 0
    taken_over: int = 0
    completed: int = 0
    failed: int = 0
    waiting: int = 0
    preempted: int = 0
    stopped: int = 0  # cancelled, or timed out at its deadline
    abandoned: int = 0
    parked: int = 0
    errors: int = 0
    runs: list[UUID] = field(default_factory=list)


class Worker:
    def __init__(
        self,
        engine: Engine,
        *,
        concurrency: int | None = None,
        queues: Sequence[str] | None = None,
        queue_limits: Sequence[tuple[str, int]] = (),
        suspend_after_s: float = 1.0,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        settings = engine.settings
        self.engine = engine
        self.concurrency = concurrency or settings.worker_concurrency
        self.queues = list(queues) if queues else None
        self.queue_limits = list(queue_limits)
        self.suspend_after_s = suspend_after_s
        self.poll_interval_s = settings.worker_poll_interval_s
        self.drain_timeout_s = settings.worker_drain_timeout_s
        self.stats = WorkerStats()
        self.metrics = metrics
        if metrics is not None:
            engine.observers.append(metrics.observe)
        self._wake = threading.Event()
        self._in_flight: dict[UUID, Future[None]] = {}

    @property
    def worker_id(self) -> str:
        return self.engine.settings.worker_id

    def run(self) -> WorkerStats:
        """Claim and drive runs until the engine's token is set; then drain and return."""
        with bound(worker_id=self.worker_id):
            return self._run()

    def _run(self) -> WorkerStats:
        engine, token = self.engine, self.engine.token
        leases = engine.leases
        if self.queue_limits:
            leases.set_limits([(queue_scope(q), n) for q, n in self.queue_limits])
        engine.lease_keeper()  # heartbeats run before the first claim
        listener = _start_listener(self)
        log.info(
            "worker %s started: %d slots, queues %s, lease %gs, heartbeat %gs",
            self.worker_id, self.concurrency, ",".join(self.queues or ["(all)"]),
            engine.settings.lease_duration_s, engine.settings.heartbeat_interval_s,
        )
        next_sweep = next_ticks = 0.0
        backoff = 0.0
        pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="stepstone-run")
        try:
            while not token.requested:
                now = time.monotonic()
                try:
                    if now >= next_sweep:
                        self.sweep()
                        next_sweep = now + _SWEEP_INTERVAL_S
                    if now >= next_ticks:  # schedules: start the runs of due ticks
                        fire_due(engine)
                        next_ticks = now + _TICKS_INTERVAL_S
                    self._claim_into(pool)
                    backoff = 0.0
                except StoreUnavailableError as e:
                    backoff = min(max(backoff * 2, 0.5), 10.0)
                    log.warning("store unreachable, retrying in %.1fs: %s", backoff, e)
                    token.wait(backoff)
                    continue
                self._wait_for_work()
        finally:
            self._drain(pool)
            if listener is not None:
                listener.stop()
        s = self.stats
        log.info(
            "worker %s stopped: %d claimed (%d taken over), %d completed, %d failed, "
            "%d waiting, %d preempted, %d cancelled or timed out, %d abandoned, %d parked, "
            "%d errors",
            self.worker_id, s.claimed, s.taken_over, s.completed, s.failed, s.waiting,
            s.preempted, s.stopped, s.abandoned, s.parked, s.errors,
        )
        return s

    def wake(self) -> None:
        self._wake.set()

    # -- claiming -------------------------------------------------------------------------
    def _claim_into(self, pool: ThreadPoolExecutor) -> None:
        self._reap()
        free = self.concurrency - len(self._in_flight)
        if free <= 0:
            return
        since = time.monotonic()
        claims = self.engine.leases.claim(
            self.worker_id, self.queues, free, self.engine.settings.lease_duration_s
        )
        for claim in claims:
            self.stats.claimed += 1
            self.stats.runs.append(claim.run_id)
            if claim.taken_from is not None:
                self.stats.taken_over += 1
                if self.metrics is not None:
                    self.metrics.takeovers.labels(claim.workflow).inc()
                log.info(
                    "took over run %s from worker %s (its lease expired)",
                    claim.run_id, claim.taken_from,
                    extra={"run_id": str(claim.run_id), "workflow": claim.workflow},
                )
            fut = pool.submit(self._drive, claim, since)
            fut.add_done_callback(lambda _f: self._wake.set())
            self._in_flight[claim.run_id] = fut
        self._gauge()

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.in_flight.set(len(self._in_flight))

    def _wait_for_work(self) -> None:
        # Woken by a finished run (a free slot), a NOTIFY from a new run, or preemption.
        self._wake.clear()
        if self._reap() and len(self._in_flight) < self.concurrency:
            return
        deadline = time.monotonic() + self.poll_interval_s
        while not self.engine.token.requested:
            left = deadline - time.monotonic()
            if left <= 0 or self._wake.wait(min(left, 0.1)):
                return

    def _reap(self) -> int:
        done = [run_id for run_id, fut in self._in_flight.items() if fut.done()]
        for run_id in done:
            del self._in_flight[run_id]
        if done:
            self._gauge()
        return len(done)

    # -- driving --------------------------------------------------------------------------
    def _drive(self, claim: Claim, since: float) -> None:
        with bound(run_id=str(claim.run_id), workflow=claim.workflow, worker_id=self.worker_id):
            self._drive_claim(claim, since)

    def _drive_claim(self, claim: Claim, since: float) -> None:
        engine, stats, run_id = self.engine, self.stats, claim.run_id
        # A finished run is never parked, whatever its takeover count (its release was lost):
        # drive_claimed below marks it done without driving it.
        if (claim.takeovers > engine.settings.max_takeovers
                and not engine.store.load(run_id).status.is_terminal):
            note = (
                f"parked: its worker died {claim.takeovers} times in a row while driving "
                "it (a step that kills its process?). Fix the cause, then `stepstone resume "
                f"{run_id}`"
            )
            try:
                park_crash_loop(engine.store, run_id, note, worker_id=self.worker_id,
                                clock=utc_now)
            finally:
                engine.leases.release(run_id, self.worker_id, state=PARKED, note=note)
            stats.parked += 1
            log.error("run %s %s", run_id, note)
            return
        try:
            result = engine.drive_claimed(
                run_id,
                since=since,
                resume_reason=ResumeReason.LEASE_EXPIRED if claim.taken_from else None,
                suspend_after_s=self.suspend_after_s,
            )
        except (RunConflictError, LeaseLostError) as e:
            stats.abandoned += 1
            log.warning("abandoned run %s: %s", run_id, e)
            return
        except NonDeterminismError as e:
            stats.parked += 1
            log.error("parked run %s: %s", run_id, e)
            return
        except WorkflowNotFoundError as e:
            stats.errors += 1
            engine.leases.release(
                run_id, self.worker_id, state=READY,
                available_at=time.time() + _NO_CODE_BACKOFF_S, note=str(e),
            )
            log.error("cannot drive run %s here: %s", run_id, e)
            return
        except EngineError as e:
            stats.errors += 1
            log.error("run %s stopped on an error (it will be retried): %s", run_id, e)
            return
        except Exception:
            stats.errors += 1
            log.exception("run %s stopped on an unexpected error (it will be retried)", run_id)
            return
        self._count(result)

    def _count(self, result: RunResult) -> None:
        status = result.status
        if result.resume_at is not None:
            self.stats.waiting += 1
        elif status is RunStatus.COMPLETED:
            self.stats.completed += 1
        elif status is RunStatus.FAILED:
            self.stats.failed += 1
        elif status is RunStatus.PREEMPTED:
            self.stats.preempted += 1
        elif status in STOPPED:
            self.stats.stopped += 1

    def _drain(self, pool: ThreadPoolExecutor) -> None:
        futures = list(self._in_flight.values())
        if futures:
            log.info(
                "draining: %d runs stop at their next checkpoint (waiting up to %.0fs)",
                len(futures), self.drain_timeout_s,
            )
        t0 = time.monotonic()
        _, not_done = wait(futures, timeout=self.drain_timeout_s, return_when="ALL_COMPLETED")
        if not_done:
            log.warning(
                "%d runs did not reach a checkpoint within %.0fs; exiting anyway (their "
                "leases expire and other workers take over)", len(not_done), self.drain_timeout_s,
            )
        pool.shutdown(wait=False, cancel_futures=True)
        log.info("drained in %.1fs", time.monotonic() - t0)

    # -- repair ---------------------------------------------------------------------------
    def sweep(self) -> int:
        """Give every run in the log a row in the index (a crash can separate the two)."""
        leases, store = self.engine.leases, self.engine.store
        start = leases.sweep_position()
        head = store.head()
        if head <= start:
            return 0
        rows: list[tuple[UUID, str, str]] = []
        position = start
        for pos, started in store.started_after(start):
            rows.append((started.originator_id, started.workflow, started.queue))
            position = pos
        added = leases.restore(rows, max(position, head))
        if added:
            log.warning("restored %d runs missing from the runnable index", added)
        return added


class _Listener:
    """Wakes the worker when a run is enqueued (PostgreSQL LISTEN), instead of a full poll."""

    def __init__(self, worker: Worker) -> None:
        self._worker = worker
        self._stop = threading.Event()
        self._conn = listen(worker.engine.location, worker.engine.leases.channel)
        self._thread = threading.Thread(target=self._loop, name="stepstone-listen", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                for _ in self._conn.notifies(timeout=0.5, stop_after=1):
                    self._worker.wake()
        except Exception as e:  # a lost connection only means falling back to polling
            log.info("queue listener stopped (polling continues): %s", e)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._conn.close()


def _start_listener(worker: Worker) -> _Listener | None:
    if worker.engine.location.kind != "postgres":
        return None
    try:
        return _Listener(worker)
    except Exception as e:
        log.info("no queue listener (polling instead): %s", e)
        return None

