"""Stepstone's read side: progress views kept up to date from the run log.

    from projections import Projector, catch_up

    catch_up("sqlite:///stepstone.db")          # bring every view up to date, in-process
    with Projector(engine.store) as projector:   # or drive one yourself
        projector.catch_up()
        projector.rebuild("runs")
        projector.status()

The views are tables in the log's own database (`stepstone_view_runs`, ...), to be read with
plain SQL; docs/projections.md describes their columns, and `VIEW_TABLES` holds each view's
table spec (`f"{DEFAULT_PREFIX}_{spec.name}"`, its column names and types) for code that reads
them by column name.
"""

from projections.catalog import VIEW_CLASSES, VIEW_TABLES
from projections.errors import (
    EventNotProjectableError,
    ProjectionsError,
    UnknownViewError,
    ViewSchemaError,
    ViewStoreError,
)
from projections.projector import DEFAULT_PREFIX, Projector, ViewStatus, catch_up
from projections.sql import Table

VIEWS: tuple[str, ...] = tuple(VIEW_CLASSES)

__all__ = [
    "DEFAULT_PREFIX",
    "VIEWS",
    "VIEW_TABLES",
    "EventNotProjectableError",
    "ProjectionsError",
    "Projector",
    "Table",
    "UnknownViewError",
    "ViewSchemaError",
    "ViewStatus",
    "ViewStoreError",
    "catch_up",
]
