"""The engine object embedding code holds: start runs, drive them, read them back."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from engine import starts
from engine.aggregate import WorkflowRun
from engine.audit.parking import park
from engine.children import cancel_children, wake_parent_or_self
from engine.control import CancelOutcome
from engine.control import cancel as cancel_run
from engine.definitions import Workflow
from engine.driver import Observer, RunDriver, utc_now
from engine.errors import (
    ConfigurationError,
    DamagedLogError,
    EngineError,
    IdempotencyConflictError,
    LeaseLostError,
    NonDeterminismError,
    RunConflictError,
    RunLeasedError,
    StoreUnavailableError,
    UnknownEventError,
    WorkflowNotFoundError,
)
from engine.events import ResumeReason
from engine.group_commit import GroupCommit
from engine.identity import load_workflow
from engine.logcontext import get_logger
from engine.messages import SendOutcome, wake_if_delivered
from engine.messages import send as send_message
from engine.observe import log_events
from engine.preemption import PreemptionToken
from engine.published import read_published
from engine.reads import RunReads
from engine.results import RunResult
from engine.schedules import Schedule, add_schedule
from engine.settings import Settings
from engine.status import STOPPED
from engine.stopping import CancelRequest
from engine.storage import parse_store_url
from engine.store import RunStore
from engine.store_faults import ErrorBackoff, StoreFaults
from engine.workers.cancels import cancel_request, clear_cancel
from engine.workers.heartbeat import LeaseKeeper
from engine.workers.leases import DONE, PARKED, READY, LeaseStore

log = get_logger("stepstone.engine")


class Engine(RunReads):
    """Starts, drives and reads workflow runs on one event store.

    `token` is the preemption token: set it (or call `preempt()`) from another thread or a
    signal handler, and the run in flight stops at its next checkpoint or step boundary with
    its progress persisted.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        workflows: Iterable[Workflow[..., Any]] = (),
        token: PreemptionToken | None = None,
        create: bool = True,
    ) -> None:
        self.settings = settings or Settings()
        self.token = token or PreemptionToken()
        self._workflows: dict[str, Workflow[..., Any]] = {}
        self.register(*workflows)
        location = parse_store_url(
            self.settings.database_url,
            connect_timeout_s=self.settings.connect_timeout_s,
            pool_size=self.settings.postgres_pool_size,
        )
        if not create and location.sqlite_path and not location.sqlite_path.exists():
            raise StoreUnavailableError(
                location.display, f"no such file {location.sqlite_path} (nothing has run here yet)"
            )
        if location.sqlite_path and not location.sqlite_path.parent.exists():
            raise StoreUnavailableError(
                location.display, f"directory {location.sqlite_path.parent} does not exist"
            )
        self.location = location
        self.store = RunStore(location, snapshot_interval=self.settings.snapshot_interval)
        self._leases: LeaseStore | None = None
        self._keeper: LeaseKeeper | None = None
        self.group_commit = GroupCommit(self.store)
        self._error_backoff = ErrorBackoff()
        self.observers: list[Observer] = [log_events]
        """Told about every save's events: logs by default; a worker adds its metrics."""

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> Engine:
        return cls(Settings(database_url=url), **kwargs)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._keeper is not None:
            self._keeper.stop()
        if self._leases is not None:
            self._leases.close()
        self.store.close()

    @property
    def leases(self) -> LeaseStore:
        """The runnable index beside the log (created on first use: readers never need it)."""
        if self._leases is None:
            self._leases = LeaseStore(self.location)
        return self._leases

    def lease_keeper(self) -> LeaseKeeper:
        """Renews the leases this process holds, in a background thread started on the first
        call (a process that only reads never starts one)."""
        if self._keeper is None:
            self._keeper = LeaseKeeper(
                self.leases,
                self.settings.worker_id,
                lease_s=self.settings.lease_duration_s,
                interval_s=self.settings.heartbeat_interval_s,
            )
            self._keeper.start()
        return self._keeper

    def driving(self) -> LeaseKeeper | None:
        """The keeper of the leases this engine holds, if it has driven anything."""
        return self._keeper

    def register(self, *workflows: Workflow[..., Any]) -> None:
        for wf in workflows:
            if not isinstance(wf, Workflow):
                raise ConfigurationError(f"{wf!r} is not a @workflow")
            self._workflows[wf.name] = wf

    # -- writing --------------------------------------------------------------------------
    def start(
        self,
        workflow: Workflow[..., Any],
        input: Mapping[str, Any] | None = None,
        *,
        key: str | None = None,
        deadline: datetime | timedelta | None = None,
    ) -> UUID:
        """Record a new run for any worker to drive. With `key`, starting twice gives one run.

        Nothing executes here: `resume(run_id)` drives it in this process, or a
        `stepstone worker` on the same store picks it up. `deadline` (an instant, or a
        duration from now; default: the workflow's `timeout`) is when the run is stopped,
        ending `timed_out`, wherever it is then.
        """
        return self._start(workflow, input, key=key, owner=None, deadline=deadline)

    def start_many(
        self,
        workflow: Workflow[..., Any],
        inputs: Iterable[Mapping[str, Any] | None],
        *,
        keys: Sequence[str | None] | None = None,
    ) -> list[UUID]:
        """Record many runs at once, their ids in input order: one commit (their first events
        and their rows in the runnable index) per 500 runs. `keys[i]`, if given, is run i's
        idempotency key.

        A key already taken makes its chunk start run by run instead, so the runs it names
        are returned (or `IdempotencyConflictError` raised) exactly as `start` would.
        """
        return starts.start_many(self, workflow, inputs, keys)

    def _start(
        self,
        workflow: Workflow[..., Any],
        input: Mapping[str, Any] | None,
        *,
        key: str | None,
        owner: str | None,
        deadline: datetime | timedelta | None = None,
    ) -> UUID:
        self.register(workflow)
        run, digest = starts.new_run(workflow, input, key, self.settings.worker_id,
                                     deadline=deadline)
        run_id = run.id
        events = list(run.pending_events)
        # The run's row in the runnable index commits with its first event: one commit per
        # start, shared with other threads' starts and saves. (Held by `owner` when this
        # process drives it next.)
        row = [starts.index_row(workflow, run_id, owner, self.settings.lease_duration_s)]
        try:
            self.group_commit.save_run(run, self.leases.enqueue_statements(row))
            for observer in self.observers:
                observer(run, events)
        except RunConflictError:
            if key is None:
                raise
            existing = self.store.load(run_id)
            if existing.state.input_digest != digest:
                raise IdempotencyConflictError(key, run_id) from None
            log.info("idempotency key %r: returning existing run %s", key, run_id)
            # Started before the index existed, or its row was lost: restore it (a no-op
            # when it is there; a worker's sweep would restore it from the log too).
            self.leases.enqueue_many(row)
        return run_id

    def run(
        self,
        workflow: Workflow[..., Any],
        input: Mapping[str, Any] | None = None,
        *,
        key: str | None = None,
        deadline: datetime | timedelta | None = None,
    ) -> RunResult:
        """Start (or, with a known key, find) a run and drive it until it ends or is preempted."""
        return self.resume(
            self._start(workflow, input, key=key, owner=self.settings.worker_id,
                        deadline=deadline)
        )

    def resume(self, run_id: UUID, *, force: bool = False) -> RunResult:
        """Drive a run here from where its log says it is, until it ends or is preempted.

        A finished run just returns its result; with `force`, a cancelled or timed-out one is
        reopened (recorded as `RunResumed(reason=forced)`, its deadline lifted) and driven on
        from its log. The run is leased to this process while it runs, so workers leave it
        alone; `RunLeasedError` if a live worker holds it now.
        """
        run = self.store.load(run_id)
        reopen = force and run.status in STOPPED
        if run.status.is_terminal and not reopen:
            return RunResult.of(run)
        since = time.monotonic()
        holder = self.leases.claim_run(
            run_id, self.settings.worker_id, self.settings.lease_duration_s,
            workflow=run.state.workflow, queue=run.state.queue,
        )
        if holder is not None:
            raise RunLeasedError(run_id, holder)
        if reopen:
            clear_cancel(self.leases, run_id)  # the cancel that ended it is spent
        return self.drive_claimed(
            run_id, since=since, resume_reason=ResumeReason.FORCED if reopen else None
        )

    def cancel(self, run_id: UUID, *, reason: str = "cancelled", by: str | None = None,
               wait_s: float = 0.0, children: bool = True) -> CancelOutcome:
        """Cancel a run wherever it is (docs/controlling-runs.md): at once if nobody drives
        it, else at its holder's next checkpoint or step boundary (waiting up to `wait_s` for
        that). `RunFinishedError` for a finished run, nothing written. Its unfinished child
        runs are cancelled too, unless `children` is False (docs/messages.md)."""
        outcome = cancel_run(self, run_id, reason=reason, by=by, wait_s=wait_s)
        if children:
            cancel_children(self, self.store.load(run_id), reason, by)
        return outcome

    def send(self, run_id: UUID, topic: str, payload: Any, *,
             message_id: str | None = None) -> SendOutcome:
        """Send a message to a run (docs/messages.md): durable when this returns, consumed
        once by the run's `receive(topic)`; the same `message_id` again is a no-op. Errors
        for an unknown or finished run, a bad topic or payload; nothing written then."""
        return send_message(self, run_id, topic, payload, message_id=message_id)

    def schedule(self, workflow: Workflow[..., Any], cron: str,
                 input: Mapping[str, Any] | None = None, *, name: str | None = None,
                 timezone: str = "UTC", missed: str = "latest") -> Schedule:
        """Start `workflow` on every tick of `cron` in `timezone`, one run per tick across all
        workers (which fire the ticks); `missed`: latest, all or skip (engine.schedules)."""
        return add_schedule(self, workflow, cron, input, name=name, timezone=timezone,
                            missed=missed)

    def read_published(self, run_id: UUID, key: str, *, wait: float | None = None) -> Any:
        """The latest value the run `publish`ed for `key` (from its log), waiting up to `wait`
        seconds for it; `NotPublishedError` if it is not there (docs/messages.md)."""
        return read_published(self, run_id, key, wait=wait)

    def drive_claimed(
        self,
        run_id: UUID,
        *,
        since: float,
        resume_reason: ResumeReason | None = None,
        suspend_after_s: float | None = None,
    ) -> RunResult:
        """Drive a run whose lease this process just took (at monotonic time `since`).

        The lease is kept alive while the run is driven and handed back afterwards: finished,
        due again now (preempted), due at a later time (waiting), or parked (diverged).

        A save that fails (or may have failed) ends that drive: nothing more is written from
        its copy of the run. For up to `settings.store_retry_s` the run is then reloaded from
        the log and driven again, with backoff, under the same lease; past that, or once
        preemption is requested, `StoreUnavailableError` is raised with the progress saved.
        """
        keeper = self.lease_keeper()
        keeper.hold(run_id, since=since)
        faults = StoreFaults(self.settings.store_retry_s, self.token)
        try:
            while True:
                try:
                    if faults.first is not None:
                        self._keep_lease(run_id, keeper)  # it may have lapsed meanwhile
                    return self._drive_once(
                        run_id, keeper, resume_reason, suspend_after_s, loaded=faults.loaded
                    )
                except StoreUnavailableError as e:
                    if not faults.retry(run_id, e):
                        self._release(run_id, state=READY, at=faults.due_again())
                        raise
                    resume_reason = ResumeReason.STORE_FAULT
        finally:
            keeper.drop(run_id)

    def _keep_lease(self, run_id: UUID, keeper: LeaseKeeper) -> None:
        """After a store fault: take the run's lease again if it lapsed and nobody took it.

        An outage longer than the lease stops the heartbeats; if no other worker claimed the
        run meanwhile, this process may go on (the claim is atomic, and the log's optimistic
        concurrency still fences). If one did, it drives the run now: `LeaseLostError`.
        """
        try:
            keeper.check(run_id)
            return
        except LeaseLostError:
            pass
        since = time.monotonic()
        run = self.store.load(run_id)
        holder = self.leases.claim_run(
            run_id, self.settings.worker_id, self.settings.lease_duration_s,
            workflow=run.state.workflow, queue=run.state.queue,
        )
        if holder is not None:
            raise LeaseLostError(run_id, f"worker {holder} took the run over while the store "
                                 "was unreachable")
        keeper.hold(run_id, since=since)
        log.info("run %s: took its lease again after the store fault", run_id)

    def _drive_once(
        self,
        run_id: UUID,
        keeper: LeaseKeeper,
        resume_reason: ResumeReason | None,
        suspend_after_s: float | None,
        *,
        loaded: Callable[[int], None],
    ) -> RunResult:
        """One drive from a fresh load; a store fault propagates with the lease still held."""
        owner = self.settings.worker_id
        try:
            run = self.store.load(run_id)
        except (DamagedLogError, UnknownEventError) as e:
            # No worker can drive it until the log is repaired or this release upgraded:
            # parked in the index (the log itself cannot take an event), not claimed again
            # every lease period. `stepstone resume` asks for it by name and tries again.
            self._release(run_id, state=PARKED, note=str(e))
            raise
        loaded(run.version)
        forced = resume_reason is ResumeReason.FORCED and run.status in STOPPED
        if run.status.is_terminal and not forced:
            self._release(run_id, state=DONE)
            return RunResult.of(run)
        definition = self._definition_for(run)
        if definition.version != run.state.workflow_version:
            log.warning(
                "run %s was started by %s version %d; the code now says version %d",
                run.id, definition.name, run.state.workflow_version, definition.version,
            )
        driver = RunDriver(
            self.store,
            run,
            definition,
            worker_id=owner,
            token=self.token,
            checkpoint_min_interval_s=self.settings.checkpoint_min_interval_s,
            lease_check=lambda: keeper.check(run_id),
            suspend_after_s=suspend_after_s,
            resume_reason=resume_reason,
            saver=self.group_commit.save_run,
            observers=tuple(self.observers),
            cancel_check=self._cancel_check(run_id, keeper),
            limits=self.settings.run_limits(),
        )
        driver.inbox = self.leases
        driver.child_engine = self
        try:
            result = driver.drive()
        except NonDeterminismError as e:
            # Audit (docs/audit.md): record RunParked, so the status shows everywhere, then
            # hand the lease back as parked.
            parked = park(self.store, e, worker_id=owner, clock=utc_now)
            self._release(run_id, state=PARKED, note=str(parked))
            raise parked from e
        except StoreUnavailableError:
            raise  # the caller retries from the log, or hands the run back
        except (RunConflictError, LeaseLostError):
            self._release(run_id, state=READY)  # only if still ours: due again at once
            raise
        except Exception as e:
            # An error the code must fix (an output that cannot be recorded...): handed back
            # with a growing delay, so workers retry it without spinning on it.
            self._release(run_id, state=READY, at=self._error_backoff.due(run_id), note=str(e))
            raise
        except BaseException:
            self._release(run_id, state=READY)
            raise
        self._error_backoff.clear(run_id)
        if result.status.is_terminal:
            self._release(run_id, state=DONE)
            if keeper.cancel_requested(run_id) is not None:
                clear_cancel(self.leases, run_id)
        else:
            self._release(run_id, state=READY, at=result.resume_at)
            wake_if_delivered(self.leases, driver.run)  # a message sent while it was held
        wake_parent_or_self(self, driver.run)  # a child's end, seen by parent or child
        return result

    def _cancel_check(
        self, run_id: UUID, keeper: LeaseKeeper
    ) -> Callable[[], CancelRequest | None]:
        """How the driver learns of a cancel: one look now (a request made while nobody held
        the run), then the keeper's poll, read at every checkpoint without a query."""
        keeper.note_cancel(run_id, cancel_request(self.leases, run_id))
        return lambda: keeper.cancel_requested(run_id)

    def _release(
        self, run_id: UUID, *, state: str, at: datetime | None = None, note: str | None = None
    ) -> None:
        # Best effort: a release that cannot reach the store leaves a lease that expires.
        # Stop renewing first, so a heartbeat in between does not report the lease as lost.
        if self._keeper is not None:
            self._keeper.drop(run_id)
        try:
            self.leases.release(
                run_id, self.settings.worker_id, state=state,
                available_at=at.timestamp() if at is not None else None, note=note,
            )
        except EngineError as e:
            log.warning("could not hand back run %s (its lease will expire): %s", run_id, e)

    def preempt(self, reason: str = "preemption requested by the application") -> None:
        self.token.request(reason)

    # -- workflows ------------------------------------------------------------------------
    def _definition_for(self, run: WorkflowRun) -> Workflow[..., Any]:
        name = run.state.workflow
        if name in self._workflows:
            return self._workflows[name]
        wf = load_workflow(run.state.entrypoint)
        if wf.name != name:
            raise WorkflowNotFoundError(
                f"run {run.id} belongs to workflow {name!r}, but {run.state.entrypoint} now "
                f"defines {wf.name!r}; register the right workflow with the engine"
            )
        self._workflows[name] = wf
        return wf

