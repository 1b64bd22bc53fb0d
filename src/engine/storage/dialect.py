"""The SQL differences between the two stores, and the names of the log's own tables.

Queries are written once with `?` placeholders (or psycopg's `%(name)s`) and turned into each
driver's style here. The log's table names are the `eventsourcing` library's: it names the
PostgreSQL tables after the application (`RunStore.name`) and keeps a notification id column,
while on SQLite the rowid is the position. A contract test checks these against the library's
recorders, on both stores.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from engine.storage.location import StoreLocation

LOG_NAME = "stepstone"
"""`RunStore.name`, lower-cased: the prefix of the library's PostgreSQL tables."""

TYPES = {
    "uuid": ("TEXT", "uuid"),
    "text": ("TEXT", "text"),
    "int": ("INTEGER", "bigint"),
    "float": ("REAL", "double precision"),
    "ts": ("TEXT", "timestamptz"),
}
"""Logical column type -> (SQLite type, PostgreSQL type). Timestamps are ISO 8601 text on
SQLite, timestamptz on PostgreSQL; run ids are hex text on SQLite's log, uuid elsewhere."""

VIEW_TRACKING_TABLE = "stepstone_view_tracking"
"""The views' tracking table on PostgreSQL (the library's default name on SQLite)."""

_NAMED = re.compile(r"%\((\w+)\)s")


Statement = tuple[str, Sequence[Mapping[str, Any]]]
"""SQL in `%(name)s` style run once per parameter set (once without any when the list is
empty), inside the transaction that saves events: what a start adds beside its first event."""


@dataclass(frozen=True)
class Dialect:
    is_sqlite: bool
    schema: str

    @classmethod
    def of(cls, location: StoreLocation) -> Dialect:
        return cls(location.kind == "sqlite", location.schema)

    def qualify(self, table: str) -> str:
        """The table's name as SQL: in the store's schema on PostgreSQL."""
        return f'"{table}"' if self.is_sqlite else f'"{self.schema}"."{table}"'

    def qmarks(self, sql: str) -> str:
        """SQL written with `?` placeholders, in this driver's style."""
        return sql if self.is_sqlite else sql.replace("?", "%s")

    def named(self, sql: str) -> str:
        """SQL written with `%(name)s` placeholders, in this driver's style."""
        return _NAMED.sub(r":\1", sql) if self.is_sqlite else sql

    def column_type(self, logical: str) -> str:
        return TYPES[logical][0 if self.is_sqlite else 1]

    # -- the library's tables -------------------------------------------------------------
    @property
    def events_table(self) -> str:
        return self.qualify("stored_events" if self.is_sqlite else f"{LOG_NAME}_events")

    @property
    def snapshots_table(self) -> str:
        return self.qualify("stored_snapshots" if self.is_sqlite else f"{LOG_NAME}_snapshots")

    @property
    def position(self) -> str:
        """The column holding an event's global position in the log."""
        return "rowid" if self.is_sqlite else "notification_id"

    @property
    def view_tracking_table(self) -> str:
        return self.qualify("tracking" if self.is_sqlite else VIEW_TRACKING_TABLE)

    def run_id_param(self) -> str:
        """The placeholder of a run id compared with the log's originator_id column."""
        return "?" if self.is_sqlite else "?::uuid"

    def run_id_value(self, run_id: object) -> object:
        """A run id as the log's originator_id column holds it."""
        rid = run_id if isinstance(run_id, UUID) else UUID(str(run_id))
        return rid.hex if self.is_sqlite else str(rid)
