"""The run log: an `eventsourcing` Application over SQLite or PostgreSQL.

Everything the engine writes goes through `save_run`, one atomic commit of a run's pending
events whose uniqueness on (run id, version) is the optimistic-concurrency fence.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, cast
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.domain import CanMutateAggregate, OriginatorVersionError
from eventsourcing.persistence import (
    IntegrityError,
    InterfaceError,
    OperationalError,
    PersistenceError,
    StoredEvent,
)
from eventsourcing.sqlite import SQLiteDatastore
from eventsourcing.utils import Environment, EnvType, get_topic, retry

from engine.aggregate import RunSnapshot, WorkflowRun
from engine.codec import OrjsonTranscoder, PydanticMapper
from engine.errors import (
    DamagedLogError,
    RunConflictError,
    RunNotFoundError,
    StoreUnavailableError,
    StoreWriteError,
    UnknownEventError,
)
from engine.events import RunEvent, RunStarted
from engine.logcontext import get_logger
from engine.storage import (
    Dialect,
    LogReader,
    Statement,
    StoreLocation,
    pg_errors,
    schema_lock,
)

if TYPE_CHECKING:
    from eventsourcing.postgres import PostgresDatastore

log = get_logger("stepstone.engine")


def _store_errors() -> tuple[type[Exception], ...]:
    """What a failing store raises (psycopg's errors only once psycopg is loaded)."""
    return (PersistenceError, *pg_errors(), sqlite3.Error, OSError)


class RunStore(Application[UUID]):
    name = "Stepstone"
    snapshot_class = RunSnapshot

    def __init__(self, location: StoreLocation, *, snapshot_interval: int = 200) -> None:
        self.location = location
        self.snapshot_interval = snapshot_interval
        self.dialect = Dialect.of(location)
        self.reader = LogReader(self._fetch, self.dialect)
        """The log's read port on this store's connections."""
        env = dict(location.env)
        env["MAPPER_TOPIC"] = get_topic(PydanticMapper)
        env["TRANSCODER_TOPIC"] = get_topic(OrjsonTranscoder)
        if snapshot_interval:
            env["IS_SNAPSHOTTING_ENABLED"] = "y"
        try:
            if location.kind == "postgres":
                with schema_lock(location):
                    super().__init__(env=env)
            else:
                super().__init__(env=env)
        except _store_errors() as e:
            raise StoreUnavailableError(location.display, _reason(e)) from e

    def construct_env(self, name: str, env: EnvType | None = None) -> Environment:
        # The library would merge os.environ in; our Settings object is the only reader of the
        # environment, so the store sees exactly what it was given.
        return Environment(name, dict(env or {}))

    def load(self, run_id: UUID, *, version: int | None = None) -> WorkflowRun:
        """The run rebuilt from its latest usable snapshot and the events after it.

        Events are read in pages, so a long run never sits in memory twice. A snapshot is
        trusted only if it decodes and its chain hash is the hash of the stored event at its
        version; otherwise it is ignored with a warning and the run loads from its events. A
        version missing from the log, or an event that does not decode, is `DamagedLogError`.
        """
        try:
            snapshot = self._latest_snapshot(run_id, version)
            run = self._replay(run_id, snapshot, version) if snapshot is not None else None
            if run is None:
                run = self._replay(run_id, None, version)
        except DamagedLogError as e:
            if e.position is not None:
                raise
            raise DamagedLogError(
                run_id, e.version, self.position_of(run_id, e.version), e.what
            ) from e
        except _store_errors() as e:
            raise StoreUnavailableError(self.location.display, _reason(e)) from e
        if run is None:
            raise RunNotFoundError(run_id)
        return run

    def _latest_snapshot(self, run_id: UUID, version: int | None) -> RunSnapshot | None:
        if self.snapshots is None:
            return None
        try:
            found = list(self.snapshots.get(run_id, desc=True, limit=1, lte=version))
        except (DamagedLogError, UnknownEventError) as e:
            log.warning("ignoring the snapshot of run %s (it does not decode: %s); loading "
                        "the run from its events", run_id, e)
            return None
        return cast(RunSnapshot, found[0]) if found else None

    def _replay(
        self, run_id: UUID, snapshot: RunSnapshot | None, version: int | None
    ) -> WorkflowRun | None:
        """Fold the events after `snapshot` (all of them without one); None if the snapshot
        does not match the log, or if the run has no events."""
        run: WorkflowRun | None = None
        anchor = 0
        if snapshot is not None:
            run = snapshot.mutate(None)
            anchor = snapshot.originator_version
        anchored = snapshot is None
        gt = anchor - 1 if anchor else None  # the event at the snapshot's version is checked
        while True:
            page = cast(
                list[RunEvent],
                list(self.events.get(run_id, gt=gt, lte=version, limit=_LOAD_PAGE)),
            )
            for event in page:
                if not anchored:
                    assert run is not None
                    if event.originator_version != anchor or event.hash != run.state.last_hash:
                        break
                    anchored = True
                    continue
                run = _apply(run_id, run, event)
            else:
                if len(page) == _LOAD_PAGE:
                    gt = page[-1].originator_version
                    continue
            break
        if not anchored:
            log.warning("ignoring the snapshot of run %s at version %d: it does not match the "
                        "stored event at that version; loading the run from its events",
                        run_id, anchor)
            return None
        return run

    def save_run(self, *runs: WorkflowRun) -> None:
        """Commit the pending events of one or more runs in one transaction.

        Calls the library's event store directly rather than `Application.save`, whose
        protocol checks cost more than the rest of a step's Python work, and takes snapshots
        from the aggregates in memory instead of re-reading events as the library would.
        """
        self.save_events([(run, run.collect_events()) for run in runs])

    def save_events(
        self,
        batch: Sequence[tuple[WorkflowRun, Sequence[CanMutateAggregate[UUID]]]],
        also: Sequence[Statement] = (),
    ) -> None:
        """Commit events already collected from their runs, all in one transaction, with the
        statements `also` (in `%(name)s` style: a start's row in the runnable index)."""
        events = [event for _, run_events in batch for event in run_events]
        if not events:
            return
        try:
            if also:
                self.events.put(events, also=_merged(also))
            else:
                self.events.put(events)
        except IntegrityError:
            raise RunConflictError(events[0].originator_id) from None
        except _store_errors() as e:
            raise StoreWriteError(self.location.display, _reason(e)) from e
        if self.snapshots is not None:
            for run, _ in batch:
                if run.version - run.snapshot_version >= self._snapshot_gap(run):
                    self._snapshot(run)

    def _snapshot(self, run: WorkflowRun) -> None:
        # The run's events are committed already; a snapshot only saves reading them again,
        # so failing to store one must not fail the save.
        try:
            self.snapshots.put([RunSnapshot.take(run)])  # type: ignore[union-attr]
        except _store_errors() as e:
            log.warning("no snapshot of run %s at version %d: %s", run.id, run.version, e)
        run.snapshot_version = run.version

    def _snapshot_gap(self, run: WorkflowRun) -> int:
        # A snapshot holds every step's record, so its cost grows with the run; spacing them by
        # a quarter of the run's size keeps their cost per step constant for long runs, up to
        # _MAX_SNAPSHOT_GAP events, which bounds the events a load replays after a snapshot.
        return max(self.snapshot_interval, min(len(run.steps) // 4, _MAX_SNAPSHOT_GAP))

    def events_with_positions(self, run_id: UUID) -> list[tuple[int, RunEvent]]:
        """The run's events in order, each with its global position in the log."""
        out = []
        for row in self.reader.iter_run(run_id):
            stored = StoredEvent(originator_id=run_id, originator_version=row.version,
                                 topic=row.topic, state=row.state)
            try:
                event = self.mapper.to_domain_event(stored)
            except DamagedLogError as e:
                raise DamagedLogError(run_id, row.version, row.position, e.what) from e
            out.append((row.position, cast(RunEvent, event)))
        if not out:
            raise RunNotFoundError(run_id)
        return out

    def started(self, batch: int = 1000) -> Iterator[RunStarted]:
        """The `RunStarted` event of every run, in the order the runs were started."""
        return (event for _, event in self.started_after(0, batch))

    def started_after(
        self, position: int, batch: int = 1000
    ) -> Iterator[tuple[int, RunStarted]]:
        """The `RunStarted` events past global `position`, each with its own position."""
        topic = get_topic(RunStarted)
        start: int | None = position or None
        while True:
            notes = self.recorder.select_notifications(
                start, batch, topics=[topic], inclusive_of_start=False
            )
            for note in notes:
                yield note.id, cast(RunStarted, self.mapper.to_domain_event(note))
            if len(notes) < batch:
                return
            start = notes[-1].id

    def head(self) -> int:
        return self.reader.head()
    def snapshotted_runs(self) -> list[UUID]:
        """The runs that have at least one snapshot (for `verify`, which checks them)."""
        if self.snapshots is None:
            return []
        rows = self._fetch(f"SELECT DISTINCT originator_id FROM {self.dialect.snapshots_table}",
                           ())
        return [r[0] if isinstance(r[0], UUID) else UUID(str(r[0])) for r in rows]

    def snapshot_versions(self, run_id: UUID) -> list[int]:
        """The versions at which the run has a snapshot, oldest first."""
        if self.snapshots is None:
            return []
        rows = self._fetch(
            f"SELECT originator_version FROM {self.dialect.snapshots_table} WHERE "
            f"originator_id = {self.dialect.run_id_param()} ORDER BY originator_version",
            (self.dialect.run_id_value(run_id),))
        return [int(r[0]) for r in rows]

    def snapshot_row(self, run_id: UUID, version: int) -> StoredEvent | None:
        """The run's snapshot at `version`, undecoded (so a bad one can be named)."""
        if self.snapshots is None:
            return None
        found = self.snapshots.recorder.select_events(run_id, gt=version - 1, lte=version)
        return found[0] if found else None

    def replay_events(self, run_id: UUID) -> Iterator[WorkflowRun]:
        """The run after each of its events in turn, folded from the log alone (no snapshot),
        read in pages. The same object is yielded each time, mutated: compare, do not keep."""
        run: WorkflowRun | None = None
        gt: int | None = None
        while True:
            page = cast(list[RunEvent], list(self.events.get(run_id, gt=gt, limit=_LOAD_PAGE)))
            for event in page:
                run = _apply(run_id, run, event)
                yield run
            if len(page) < _LOAD_PAGE:
                return
            gt = page[-1].originator_version

    def position_of(self, run_id: UUID, version: int) -> int | None:
        """The log position of the run's first event at or after `version` (for messages)."""
        try:
            return self.reader.position_of(run_id, version)
        except _store_errors():
            return None

    @property
    def datastore(self) -> SQLiteDatastore | PostgresDatastore:
        """The library's datastore under this store: the views keep their tracking records
        in it, so a batch's rows and its position commit in one transaction."""
        return cast(Any, self).factory.datastore  # type: ignore[no-any-return]

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def _fetch(self, sql: str, params: Sequence[Any]) -> Sequence[Sequence[Any]]:
        """One read on the event store's own connections (the `LogReader`'s `fetch`)."""
        datastore = self.datastore
        if isinstance(datastore, SQLiteDatastore):
            with datastore.transaction(commit=False) as c:
                # Plain tuples: the library's `sqlite3.Row`s, then a tuple made of each, cost
                # more than reading the rows (measured on a rebuild's pages of 2,000 events).
                c.sqlite_cursor.row_factory = None
                c.execute(sql, tuple(params))
                return c.fetchall()  # type: ignore[no-any-return]
        from psycopg.rows import tuple_row

        with datastore.get_connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
            cur.execute(self.dialect.qmarks(sql), tuple(params))
            return cur.fetchall()
_LOAD_PAGE = 5000

_MAX_SNAPSHOT_GAP = 4000
"""At most this many events between two snapshots of a long run (unless `snapshot_interval`
asks for more): replaying them costs ~40 us each, so a load stays within ~0.2 s of its
snapshot's decode; a snapshot of a 33,000-step run costs ~25 us a step spread over the gap."""
def _apply(run_id: UUID, run: WorkflowRun | None, event: RunEvent) -> WorkflowRun:
    """Fold one event, naming the damage when the log skips a version."""
    expected = 1 if run is None else run.version + 1
    if event.originator_version != expected:
        raise DamagedLogError(
            run_id, expected, None,
            f"version {expected} is missing (the next stored event is version "
            f"{event.originator_version})",
        )
    try:
        return cast(WorkflowRun, event.mutate(run))
    except OriginatorVersionError as e:  # the check above makes this unreachable
        raise DamagedLogError(run_id, expected, None, str(e)) from e
def _merged(statements: Sequence[Statement]) -> list[Statement]:
    """One statement per SQL text, with every parameter set (a group commit's starts each
    bring the same index insert and NOTIFY; sent once each, they cost one round trip)."""
    merged: dict[str, list[Any]] = {}
    for sql, params in statements:
        merged.setdefault(sql, []).extend(params)
    return list(merged.items())


def _reason(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return " ".join(lines) if lines else type(error).__name__
