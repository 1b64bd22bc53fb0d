"""Contract tests of the storage ports, run against both adapters (SQLite, PostgreSQL).

The log reader over the event store's own connections and over the API's read-only ones must
give the same answers; read-only connections must refuse every write; the view store must
commit a batch's rows with its tracking position, or neither.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from api.readonly_store import StoreReadError, open_read_only
from engine import Engine, Settings, step, workflow
from engine.storage import (
    PAGE,
    Dialect,
    LogReader,
    connect_postgres,
    connect_sqlite_read_only,
    parse_store_url,
    postgres_kwargs,
)
from engine.store import RunStore
from projections.errors import ViewStoreError
from projections.sql import Table, ViewDB


@step
def one(i: int) -> int:
    return i


@workflow("storage-contract")
def several(n: int) -> int:
    return sum(one(i) for i in range(n))


@pytest.fixture
def filled(store_url: str) -> tuple[str, list[uuid.UUID]]:
    with Engine(Settings(database_url=store_url, snapshot_interval=0)) as engine:
        ids = [engine.run(several, {"n": n}, key=f"k{n}").run_id for n in (3, 5)]
    return store_url, ids


def readers(url: str) -> Iterator[tuple[str, LogReader]]:
    """The log reader on the store's own connections, then on read-only ones."""
    store = RunStore(parse_store_url(url))
    try:
        yield "store", store.reader
    finally:
        store.close()
    read_only = open_read_only(parse_store_url(url))
    try:
        yield "read-only", LogReader(read_only.fetch, read_only.dialect)
    finally:
        read_only.close()


def test_the_dialect_names_the_librarys_own_tables(store_url: str) -> None:
    store = RunStore(parse_store_url(store_url))
    try:
        recorder = store.recorder
        names = {recorder.events_table_name}  # type: ignore[attr-defined]
        if store.snapshots is not None:
            names.add(store.snapshots.recorder.events_table_name)  # type: ignore[attr-defined]
        dialect = Dialect.of(store.location)
        listed = {dialect.events_table, dialect.snapshots_table}
        assert {dialect.qualify(n) for n in names} == listed
    finally:
        store.close()


def test_every_log_reader_gives_the_same_answers(filled: tuple[str, list[uuid.UUID]]) -> None:
    url, ids = filled
    answers = []
    for _, reader in readers(url):
        head = reader.head()
        everything = list(reader.iter_after(0))
        per_run = {rid: list(reader.iter_run(rid)) for rid in ids}
        answers.append((head, everything, per_run))
        assert head == everything[-1].position
        assert [r.position for r in everything] == sorted(r.position for r in everything)
        for rid, rows in per_run.items():
            assert [r.version for r in rows] == list(range(1, len(rows) + 1))
            assert {r.run_id for r in rows} == {rid}
            assert rows == [r for r in everything if r.run_id == rid]
            assert reader.position_of(rid, 2) == rows[1].position
            assert reader.run_events(rid, after_version=1, limit=2) == rows[1:3]
        assert reader.after(everything[2].position, limit=3) == everything[3:6]
        assert reader.run_events(uuid.uuid4()) == []
    assert answers[0] == answers[1]


def test_the_log_reader_pages_a_long_run(store_url: str) -> None:
    with Engine(Settings(database_url=store_url, snapshot_interval=0)) as engine:
        rid = engine.run(several, {"n": PAGE // 2 + 10}).run_id
        rows = list(engine.store.reader.iter_run(rid))
        assert len(rows) > PAGE  # more than one page, read page after page
        assert [r.version for r in rows] == list(range(1, len(rows) + 1))
        assert len(list(engine.store.reader.iter_after(0))) == len(rows)


def test_read_only_connections_refuse_writes(filled: tuple[str, list[uuid.UUID]]) -> None:
    url, _ = filled
    location = parse_store_url(url)
    dialect = Dialect.of(location)
    writes = (f"DELETE FROM {dialect.events_table}", "CREATE TABLE intruder (x int)")
    if location.kind == "sqlite":
        conn = connect_sqlite_read_only(location, timeout_s=5)
        try:
            for sql in writes:
                with pytest.raises(sqlite3.OperationalError, match=r"(?i)read.?only"):
                    conn.execute(sql)
        finally:
            conn.close()
    else:
        kwargs = postgres_kwargs(location, "contract", read_only=True)
        with psycopg.connect(**kwargs, autocommit=True) as conn:
            for sql in writes:
                with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                    conn.execute(sql)
    store = open_read_only(location)
    try:
        for sql in writes:
            with pytest.raises(StoreReadError, match=r"(?i)read.?only"):
                store.fetch(sql)
    finally:
        store.close()
    reader = RunStore(location)
    try:
        assert reader.reader.head() > 0  # nothing was deleted
    finally:
        reader.close()


def test_postgres_connections_name_their_purpose(pg_schema: str) -> None:
    location = parse_store_url(pg_schema)
    with connect_postgres(location, "contract-probe") as conn:
        name = conn.execute("SHOW application_name").fetchone()
    assert name == ("stepstone-contract-probe",)


SPEC = Table("contract_view", (("run_id", "uuid"), ("n", "int"), ("at", "ts")), ("run_id",))


def test_the_view_store_commits_rows_with_their_position_or_neither(store_url: str) -> None:
    store = RunStore(parse_store_url(store_url))
    db = ViewDB(store)
    table = db.bind(SPEC, "contract_view")
    try:
        cols = ", ".join(f"{n} {db.dialect.column_type(t)}" for n, t in SPEC.columns)
        with db.transaction(ddl=True) as tx:
            tx.execute(f"CREATE TABLE {table.qname} ({cols}, PRIMARY KEY (run_id))")
        rid = str(uuid.uuid4())
        with db.transaction(["contract_view"]) as tx:
            tx.upsert(table, [[rid, 1, "2026-01-01T00:00:00+00:00"]])
            tx.track(db.recorder, "contract/Stepstone", 7)
        with db.transaction(["contract_view"]) as tx:
            tx.upsert(table, [[rid, 2]], ["run_id", "n"], add=True)
        def replayed_batch() -> None:
            with db.transaction(["contract_view"]) as tx:
                tx.upsert(table, [[rid, 100, "2026-01-01T00:00:00+00:00"]])
                tx.track(db.recorder, "contract/Stepstone", 7)  # the same position: refused

        with pytest.raises(ViewStoreError):
            replayed_batch()
        assert db.positions(["contract/Stepstone", "never"]) == {"contract/Stepstone": 7,
                                                                  "never": 0}
        with db.transaction() as tx:
            rows = tx.select(table, ["run_id", "n"], [rid])()
        assert rows == [[rid, 3]]  # the refused batch's row was rolled back with it
    finally:
        with db.transaction(ddl=True) as tx:
            tx.execute(f"DROP TABLE IF EXISTS {table.qname}")
        db.close()
        store.close()


def test_plain_rows_are_the_librarys_notifications(filled: tuple[str, list[uuid.UUID]]) -> None:
    """`rows_after` (the projections' read) gives what `select_notifications` gives, with the
    run id as its canonical text, and stops at `stop` whatever the page size."""
    url, _ = filled
    store = RunStore(parse_store_url(url))
    try:
        notes = store.recorder.select_notifications(0, 1000, inclusive_of_start=False)
        expected = [(n.id, str(n.originator_id), n.originator_version, n.topic, bytes(n.state))
                    for n in notes]
        for _, reader in readers(url):
            head = reader.head()
            rows = [tuple(r) for r in reader.rows_after(0, head, limit=1000)]
            assert [(p, r, v, t, bytes(s)) for p, r, v, t, s in rows] == expected
            middle = expected[len(expected) // 2][0]
            page = reader.rows_after(expected[1][0], middle, limit=1000)
            assert [r[0] for r in page] == [e[0] for e in expected[2:] if e[0] <= middle]
            assert reader.rows_after(head, head + 100) == []
    finally:
        store.close()
