"""PostgreSQL recorder that saves in one round trip and still commits in notification-id order.

Why: the stock `PostgresApplicationRecorder` saves with a pipelined transaction of several
statements (BEGIN, SET LOCAL lock_timeout, LOCK TABLE ... IN EXCLUSIVE MODE, NOTIFY,
INSERT ... RETURNING, COMMIT), which costs about half the database's raw commit rate. The
library's POSTGRES_ENABLE_DB_FUNCTIONS path does it in one autocommit call of a stored
function, but in eventsourcing 9.5.6 that function does not take the table lock, so two
saves can get their ids in one order and commit in the other: a projector tailing the log
past the later id would never see the earlier one.

This recorder keeps the one-call path (`insert_events` of the library, with its @retry and
its translation of a duplicate (originator_id, originator_version) into eventsourcing's
IntegrityError, the optimistic-concurrency fence `RunStore.save_run` relies on) and gives
the stored function the table lock back: ids are issued under the EXCLUSIVE lock, which is
held until the single-statement transaction commits. Readers (ACCESS SHARE) are not blocked.

The function is named after the events table, not `es_insert_events_<type>`: the library
creates its unlocked function under that shared name whenever any stock recorder opens the
schema, which would silently replace a locked body of the same name (and it would also
point every application in the schema at one table).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eventsourcing.persistence import InterfaceError, OperationalError, StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from eventsourcing.utils import retry
from psycopg.sql import SQL, Identifier

from engine.storage.dialect import Statement


class OrderedPostgresRecorder(PostgresApplicationRecorder):
    """Saves with one call of a stored function that locks the table before taking ids.

    Needs POSTGRES_ENABLE_DB_FUNCTIONS=y; without it the library's locked pipeline runs
    instead, which is correct, only slower.
    """

    def __init__(
        self, datastore: PostgresDatastore, *, events_table_name: str = "stored_events"
    ) -> None:
        super().__init__(datastore, events_table_name=events_table_name)
        name = f"{events_table_name}_insert"
        self.check_identifier_length(name)
        schema = Identifier(datastore.schema)
        table = Identifier(events_table_name)
        # The library reads the returned column by this name (a set-returning function's
        # column is named after the function).
        self.pg_function_name_insert_events = name
        # Parallel arrays, not the library's composite-type array: psycopg dumps composites
        # as text with regex escaping of every payload, while uuid[]/bigint[]/text[]/bytea[]
        # go over the wire in binary with its C dumpers.
        self.sql_invoke_pg_function_insert_events = SQL(
            "SELECT * FROM {}.{}(%s, %s, %s, %s)"
        ).format(schema, Identifier(name))
        self.sql_create_pg_function_insert_events = SQL(
            "CREATE OR REPLACE FUNCTION {schema}.{fn}("
            "ids uuid[], versions bigint[], topics text[], states bytea[]) "
            "RETURNS SETOF bigint LANGUAGE plpgsql AS $BODY$ "
            "BEGIN "
            "SET LOCAL lock_timeout = '{lock_timeout}s'; "
            "LOCK TABLE {schema}.{table} IN EXCLUSIVE MODE; "
            "NOTIFY {channel}; "
            "RETURN QUERY "
            "INSERT INTO {schema}.{table} (originator_id, originator_version, topic, state) "
            "SELECT * FROM unnest(ids, versions, topics, states) "
            "RETURNING notification_id; "
            "END; $BODY$"
        ).format(
            schema=schema,
            fn=Identifier(name),
            lock_timeout=datastore.lock_timeout,
            table=table,
            channel=Identifier(self.channel_name),
        )
        # Replace, not add: the unlocked shared-name function is not created by this recorder.
        index = self.create_insert_function_statement_index
        self.sql_create_statements[index] = self.sql_create_pg_function_insert_events

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        # One autocommit call; a duplicate (run id, version) raises IntegrityError through
        # the datastore's translation, which is the engine's optimistic-concurrency fence.
        if not stored_events:
            return None
        params = (
            [e.originator_id for e in stored_events],
            [e.originator_version for e in stored_events],
            [e.topic for e in stored_events],
            [e.state for e in stored_events],
        )
        also: Sequence[Statement] = kwargs.get("also", ())
        with self.datastore.get_connection() as conn, conn.cursor(binary=True) as curs:
            if not also:
                curs.execute(self.sql_invoke_pg_function_insert_events, params, prepare=True)
                return [row[self.pg_function_name_insert_events] for row in curs.fetchall()]
            # Statements to commit with the events (a start's row in the runnable index): the
            # same call and them in one transaction, so a start is one commit.
            with conn.transaction():
                curs.execute(self.sql_invoke_pg_function_insert_events, params, prepare=True)
                ids = [row[self.pg_function_name_insert_events] for row in curs.fetchall()]
                for sql, rows in also:
                    if rows:
                        curs.executemany(sql, rows)
                    else:
                        curs.execute(sql)
            return ids
