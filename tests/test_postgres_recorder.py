"""The one-round-trip PostgreSQL recorder keeps the fence and the commit order of ids.

Against a real server, in a scratch schema (the `pg_schema` fixture: skipped without a
server, failed under CI=true).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from eventsourcing.application import Application
from eventsourcing.persistence import IntegrityError, StoredEvent
from psycopg import sql

from engine import Engine, RunConflictError, Settings, step, workflow
from engine import events as ev
from engine.storage import parse_store_url
from engine.storage.postgres_recorder import OrderedPostgresRecorder
from engine.store import RunStore
from support import wait_until

pytestmark = pytest.mark.postgres


@step
def one() -> int:
    return 1


@workflow("recorder_test_wf")
def small() -> int:
    return one()


def _event(originator_id: uuid.UUID, version: int = 1) -> StoredEvent:
    return StoredEvent(
        originator_id=originator_id, originator_version=version, topic="t", state=b"{}"
    )


def _conninfo(url: str) -> str:
    return url.split("?", 1)[0]


@pytest.fixture
def store(pg_schema: str) -> Iterator[RunStore]:
    s = RunStore(parse_store_url(pg_schema))
    try:
        yield s
    finally:
        s.close()


def _recorder(store: RunStore) -> OrderedPostgresRecorder:
    recorder = store.recorder
    assert isinstance(recorder, OrderedPostgresRecorder)
    return recorder


def test_store_saves_through_the_locking_function(store: RunStore) -> None:
    recorder = _recorder(store)
    assert recorder.datastore.enable_db_functions
    with recorder.datastore.get_connection() as conn:
        rows = conn.execute(
            "SELECT p.proname, pg_get_functiondef(p.oid) AS body FROM pg_proc p "
            "WHERE p.pronamespace = %s::regnamespace",
            (recorder.datastore.schema,),
        ).fetchall()
    bodies = {row["proname"]: row["body"] for row in rows}
    # Only ours: the library's unlocked es_insert_events_uuid is not created.
    assert set(bodies) == {"stepstone_events_insert"}
    assert "LOCK TABLE" in bodies["stepstone_events_insert"]
    assert "IN EXCLUSIVE MODE" in bodies["stepstone_events_insert"]

    ids = recorder.insert_events([_event(uuid.uuid4(), 1), _event(uuid.uuid4(), 1)])
    assert ids is not None
    assert len(ids) == 2
    assert ids[1] == ids[0] + 1
    assert recorder.insert_events([]) is None  # nothing saved: no lock, no commit


def test_duplicate_version_raises_integrity_error(store: RunStore) -> None:
    recorder = _recorder(store)
    run_id = uuid.uuid4()
    first = recorder.insert_events([_event(run_id, 1)])
    with pytest.raises(IntegrityError):
        recorder.insert_events([_event(run_id, 2), _event(run_id, 1)])
    # The failed save left nothing behind (not version 2 either) and the pool still works.
    assert [e.originator_version for e in recorder.select_events(run_id)] == [1]
    assert first is not None
    again = recorder.insert_events([_event(run_id, 2)])
    assert again is not None
    assert again[0] > first[0]


def test_concurrent_save_of_the_same_run_is_a_conflict(pg_schema: str) -> None:
    with Engine(Settings(database_url=pg_schema, worker_id="w"), workflows=[small]) as engine:
        run_id = engine.start(small)
        a, b = engine.store.load(run_id), engine.store.load(run_id)
        now = datetime.now(UTC)
        a.resume(ev.ResumeReason.RETRY_DUE, at=now, worker="a")
        b.resume(ev.ResumeReason.RETRY_DUE, at=now, worker="b")
        engine.store.save_run(a)
        with pytest.raises(RunConflictError):
            engine.store.save_run(b)
        assert engine.resume(run_id).status.value == "completed"


class _Insert(threading.Thread):
    """Saves one event through a recorder, remembering the ids and when it returned."""

    def __init__(self, recorder: Any) -> None:
        super().__init__(daemon=True)
        self.recorder = recorder
        self.ids: list[int] = []
        self.done_at = 0.0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.ids = list(self.recorder.insert_events([_event(uuid.uuid4())]) or [])
        except BaseException as e:  # reported by the test
            self.error = e
        self.done_at = time.monotonic()


def _hold_insert(url: str, recorder: Any) -> tuple[Any, int]:
    """Connection 1: call the recorder's insert function inside a transaction left open."""
    conn = psycopg.connect(_conninfo(url))  # not autocommit: the transaction stays open
    schema = sql.Identifier(recorder.datastore.schema)
    function = sql.Identifier(recorder.pg_function_name_insert_events)
    if isinstance(recorder, OrderedPostgresRecorder):
        query = recorder.sql_invoke_pg_function_insert_events
        params: tuple[Any, ...] = ([uuid.uuid4()], [1], ["t"], [b""])
    else:
        query = sql.SQL("SELECT * FROM {}.{}(ARRAY[ROW(%s, 1, 't', '')]::{}.{}[])").format(
            schema, function, schema, sql.Identifier(recorder.stored_event_type_name)
        )
        params = (uuid.uuid4(),)
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return conn, int(row[0])


def _sequence_value(url: str, schema: str, table: str) -> int:
    with psycopg.connect(_conninfo(url), autocommit=True) as conn:
        row = conn.execute(
            sql.SQL("SELECT last_value FROM {}.{}").format(
                sql.Identifier(schema), sql.Identifier(f"{table}_notification_id_seq")
            )
        ).fetchone()
    assert row is not None
    return int(row[0])


def _visible_ids(url: str, schema: str, table: str) -> list[int]:
    with psycopg.connect(_conninfo(url), autocommit=True) as conn:
        rows = conn.execute(
            sql.SQL("SELECT notification_id FROM {}.{} ORDER BY 1").format(
                sql.Identifier(schema), sql.Identifier(table)
            )
        ).fetchall()
    return [int(r[0]) for r in rows]


def _waiting_on_lock(url: str, schema: str, table: str) -> bool:
    with psycopg.connect(_conninfo(url), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE NOT granted AND mode = 'ExclusiveLock' "
            "AND relation = (quote_ident(%s) || '.' || quote_ident(%s))::regclass",
            (schema, table),
        ).fetchone()
    return row is not None and row[0] > 0


def test_ids_are_committed_in_order_under_concurrency(pg_schema: str, store: RunStore) -> None:
    recorder = _recorder(store)
    schema, table = recorder.datastore.schema, recorder.events_table_name
    conn1, id1 = _hold_insert(pg_schema, recorder)
    second = _Insert(recorder)
    try:
        second.start()
        def queued() -> bool:
            assert second.is_alive(), "the second save finished while the first held its ids"
            return _waiting_on_lock(pg_schema, schema, table)

        wait_until(queued, "the second save to queue on the lock", 10)
        time.sleep(0.3)
        assert second.is_alive()
        # It is waiting before taking an id, and readers are not blocked meanwhile.
        assert _sequence_value(pg_schema, schema, table) == id1
        assert _visible_ids(pg_schema, schema, table) == []
        committed_at = time.monotonic()
        conn1.commit()
    finally:
        conn1.close()
        second.join(timeout=30)
    assert second.error is None, second.error
    assert not second.is_alive()
    assert second.done_at >= committed_at
    assert second.ids == [id1 + 1]
    assert _visible_ids(pg_schema, schema, table) == [id1, id1 + 1]


def test_the_librarys_own_function_does_not_keep_that_order(pg_schema: str) -> None:
    """Why the subclass exists: eventsourcing 9.5.6's db-function path takes no table lock.

    If this starts failing after a library upgrade, the library locks now and
    OrderedPostgresRecorder may be unnecessary.
    """
    env = dict(parse_store_url(pg_schema).env)
    del env["APPLICATION_RECORDER_TOPIC"]
    app: Application[uuid.UUID] = Application(env=env)
    try:
        recorder: Any = app.recorder
        assert not isinstance(recorder, OrderedPostgresRecorder)
        schema, table = recorder.datastore.schema, recorder.events_table_name
        conn1, id1 = _hold_insert(pg_schema, recorder)
        second = _Insert(recorder)
        try:
            second.start()
            second.join(timeout=10)
            assert not second.is_alive()
            assert second.error is None, second.error
            # A later save got a higher id and committed first: a reader tailing the log
            # sees id1 + 1 while id1 is still invisible, and would skip it for good.
            assert second.ids == [id1 + 1]
            assert _visible_ids(pg_schema, schema, table) == [id1 + 1]
            conn1.commit()
        finally:
            conn1.close()
            second.join(timeout=30)
    finally:
        app.close()


def test_the_store_names_the_ordered_recorder_by_its_real_topic() -> None:
    """The topic is written out (so SQLite never imports psycopg); it must stay the class's."""
    from eventsourcing.utils import get_topic

    from engine.storage.location import ORDERED_RECORDER_TOPIC

    assert get_topic(OrderedPostgresRecorder) == ORDERED_RECORDER_TOPIC
