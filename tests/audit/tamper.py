"""Direct SQL on the events table, as someone with database access could tamper with it."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql

from engine import Engine


@contextmanager
def _cursor(engine: Engine, *, snapshots: bool = False) -> Iterator[tuple[Any, str, str]]:
    """A cursor on the store's database, the events (or snapshots) table's quoted name, and a
    placeholder."""
    store = engine.store
    recorder: Any = store.snapshots.recorder if snapshots and store.snapshots else store.recorder
    table = recorder.events_table_name
    if store.location.kind == "sqlite":
        path = store.location.sqlite_path
        conn = sqlite3.connect(str(path))
        try:
            yield conn.cursor(), table, "?"
            conn.commit()
        finally:
            conn.close()
        return
    schema = recorder.datastore.schema
    env = store.location.env
    with psycopg.connect(
        dbname=env["POSTGRES_DBNAME"], host=env["POSTGRES_HOST"], port=env["POSTGRES_PORT"],
        user=env["POSTGRES_USER"], password=env["POSTGRES_PASSWORD"], autocommit=True,
    ) as conn, conn.cursor() as cur:
        quoted = sql.Identifier(schema, table).as_string(conn)
        yield cur, quoted, "%s"


def _id(engine: Engine, run_id: UUID) -> object:
    return run_id.hex if engine.store.location.kind == "sqlite" else run_id


def read(engine: Engine, run_id: UUID, version: int) -> tuple[str, bytes]:
    with _cursor(engine) as (cur, table, p):
        cur.execute(f"SELECT topic, state FROM {table} WHERE originator_id = {p} "
                    f"AND originator_version = {p}", (_id(engine, run_id), version))
        topic, state = cur.fetchone()
        return topic, bytes(state)


def write(engine: Engine, run_id: UUID, version: int, topic: str, state: bytes) -> None:
    with _cursor(engine) as (cur, table, p):
        cur.execute(f"UPDATE {table} SET topic = {p}, state = {p} WHERE originator_id = {p} "
                    f"AND originator_version = {p}",
                    (topic, state, _id(engine, run_id), version))


def delete(engine: Engine, run_id: UUID, version: int) -> None:
    with _cursor(engine) as (cur, table, p):
        cur.execute(f"DELETE FROM {table} WHERE originator_id = {p} "
                    f"AND originator_version = {p}", (_id(engine, run_id), version))


def swap(engine: Engine, run_id: UUID, a: int, b: int) -> None:
    """Swap two events' contents: each row now holds the other's type and payload."""
    ta, sa = read(engine, run_id, a)
    tb, sb = read(engine, run_id, b)
    write(engine, run_id, a, tb, sb)
    write(engine, run_id, b, ta, sa)


def snapshot_versions(engine: Engine, run_id: UUID) -> list[int]:
    with _cursor(engine, snapshots=True) as (cur, table, p):
        cur.execute(f"SELECT originator_version FROM {table} WHERE originator_id = {p} "
                    "ORDER BY originator_version", (_id(engine, run_id),))
        return [row[0] for row in cur.fetchall()]


def read_snapshot(engine: Engine, run_id: UUID, version: int) -> bytes:
    with _cursor(engine, snapshots=True) as (cur, table, p):
        cur.execute(f"SELECT state FROM {table} WHERE originator_id = {p} "
                    f"AND originator_version = {p}", (_id(engine, run_id), version))
        return bytes(cur.fetchone()[0])


def write_snapshot(engine: Engine, run_id: UUID, version: int, state: bytes) -> None:
    with _cursor(engine, snapshots=True) as (cur, table, p):
        cur.execute(f"UPDATE {table} SET state = {p} WHERE originator_id = {p} "
                    f"AND originator_version = {p}", (state, _id(engine, run_id), version))
