"""The run log: an `eventsourcing` Application over SQLite or PostgreSQL.

Everything the engine writes goes through `save_run`, one atomic commit of a run's pending
events whose uniqueness on (run id, version) is the optimistic-concurrency fence.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast
from uuid import UUID

import psycopg
from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.domain import CanMutateAggregate
from eventsourcing.persistence import (
    IntegrityError,
    InterfaceError,
    OperationalError,
    PersistenceError,
    StoredEvent,
)
from eventsourcing.utils import Environment, EnvType, get_topic, retry

from engine.aggregate import RunSnapshot, WorkflowRun
from engine.codec import OrjsonTranscoder, PydanticMapper
from engine.errors import RunConflictError, RunNotFoundError, StoreUnavailableError
from engine.events import RunEvent, RunStarted
from engine.logcontext import get_logger
from engine.store_url import StoreLocation

log = get_logger("stepstone.engine")

_STORE_ERRORS = (PersistenceError, psycopg.Error, sqlite3.Error, OSError)


class RunStore(Application[UUID]):
    name = "Stepstone"
    snapshot_class = RunSnapshot

    def __init__(self, location: StoreLocation, *, snapshot_interval: int = 200) -> None:
        self.location = location
        self.snapshot_interval = snapshot_interval
        env = dict(location.env)
        env["MAPPER_TOPIC"] = get_topic(PydanticMapper)
        env["TRANSCODER_TOPIC"] = get_topic(OrjsonTranscoder)
        if snapshot_interval:
            env["IS_SNAPSHOTTING_ENABLED"] = "y"
        try:
            if location.kind == "postgres":
                with _schema_lock(location):
                    super().__init__(env=env)
            else:
                super().__init__(env=env)
        except _STORE_ERRORS as e:
            raise StoreUnavailableError(location.display, _reason(e)) from e

    def construct_env(self, name: str, env: EnvType | None = None) -> Environment:
        # The library would merge os.environ in; our Settings object is the only reader of the
        # environment, so the store sees exactly what it was given.
        return Environment(name, dict(env or {}))

    def load(self, run_id: UUID, *, version: int | None = None) -> WorkflowRun:
        try:
            run: WorkflowRun = self.repository.get(run_id, version=version)
        except AggregateNotFoundError:
            raise RunNotFoundError(run_id) from None
        except _STORE_ERRORS as e:
            raise StoreUnavailableError(self.location.display, _reason(e)) from e
        return run

    def save_run(self, *runs: WorkflowRun) -> None:
        """Commit the pending events of one or more runs in one transaction.

        Calls the library's event store directly rather than `Application.save`, whose
        protocol checks cost more than the rest of a step's Python work, and takes snapshots
        from the aggregates in memory instead of re-reading events as the library would.
        """
        self.save_events([(run, run.collect_events()) for run in runs])

    def save_events(
        self, batch: Sequence[tuple[WorkflowRun, Sequence[CanMutateAggregate[UUID]]]]
    ) -> None:
        """Commit events already collected from their runs, all in one transaction."""
        events = [event for _, run_events in batch for event in run_events]
        if not events:
            return
        try:
            self.events.put(events)
        except IntegrityError:
            raise RunConflictError(events[0].originator_id) from None
        except _STORE_ERRORS as e:
            raise StoreUnavailableError(self.location.display, _reason(e)) from e
        if self.snapshots is not None:
            for run, _ in batch:
                if run.version - run.snapshot_version >= self._snapshot_gap(run):
                    self._snapshot(run)

    def _snapshot(self, run: WorkflowRun) -> None:
        # The run's events are committed already; a snapshot only saves reading them again,
        # so failing to store one must not fail the save.
        try:
            self.snapshots.put([RunSnapshot.take(run)])  # type: ignore[union-attr]
        except _STORE_ERRORS as e:
            log.warning("no snapshot of run %s at version %d: %s", run.id, run.version, e)
        run.snapshot_version = run.version

    def _snapshot_gap(self, run: WorkflowRun) -> int:
        # A snapshot holds every step's record, so its cost grows with the run; spacing them by
        # a quarter of the run's size keeps their cost per step constant for very long runs,
        # and loading still reads at most that many events after the snapshot.
        return max(self.snapshot_interval, len(run.steps) // 4)

    def events_with_positions(self, run_id: UUID) -> list[tuple[int, RunEvent]]:
        """The run's events in order, each with its global position in the log."""
        rows = _select_with_positions(self, run_id)
        if not rows:
            raise RunNotFoundError(run_id)
        out = []
        for position, version, topic, state in rows:
            stored = StoredEvent(
                originator_id=run_id, originator_version=version, topic=topic, state=bytes(state)
            )
            out.append((position, cast(RunEvent, self.mapper.to_domain_event(stored))))
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
        return self.recorder.max_notification_id() or 0


@retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
def _select_with_positions(store: RunStore, run_id: UUID) -> Sequence[Sequence[Any]]:
    recorder: Any = store.recorder
    if store.location.kind == "sqlite":
        sql = (
            f"SELECT rowid, originator_version, topic, state FROM {recorder.events_table_name} "
            "WHERE originator_id = ? ORDER BY originator_version"
        )
        with recorder.datastore.transaction(commit=False) as c:
            c.execute(sql, (run_id.hex,))
            return [tuple(row) for row in c.fetchall()]
    from psycopg.sql import SQL, Identifier

    query = SQL(
        "SELECT notification_id, originator_version, topic, state FROM {}.{} "
        "WHERE originator_id = %s ORDER BY originator_version"
    ).format(Identifier(recorder.datastore.schema), Identifier(recorder.events_table_name))
    with recorder.datastore.get_connection() as conn, conn.cursor() as curs:
        curs.execute(query, (run_id,))
        return [tuple(row.values()) for row in curs.fetchall()]


SCHEMA_LOCK_KEY = 0x5E5E_0002


@contextmanager
def _schema_lock(location: StoreLocation) -> Iterator[None]:
    """Connect directly first, then hold an advisory lock while the tables are created.

    Connecting directly gives the real cause of a failure (the pool would only say it timed
    out). The lock serializes the library's CREATE TABLE / CREATE OR REPLACE FUNCTION between
    processes starting together (a pool of workers), which PostgreSQL otherwise fails with
    "tuple concurrently updated" or a duplicate catalog key.
    """
    env = location.env
    with psycopg.connect(
        dbname=env["POSTGRES_DBNAME"],
        host=env["POSTGRES_HOST"],
        port=env["POSTGRES_PORT"],
        user=env["POSTGRES_USER"],
        password=env["POSTGRES_PASSWORD"],
        connect_timeout=int(env["POSTGRES_CONNECT_TIMEOUT"]),
        autocommit=True,
    ) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (SCHEMA_LOCK_KEY,))
        try:
            yield
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (SCHEMA_LOCK_KEY,))


def _reason(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return " ".join(lines) if lines else type(error).__name__
