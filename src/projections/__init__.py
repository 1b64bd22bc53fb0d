"""Stepstone's read side: progress views kept up to date from the run log.

    from projections import Projector, catch_up

    catch_up("sqlite:///stepstone.db")          # bring every view up to date, in-process
    with Projector(engine.store) as projector:   # or drive one yourself
        projector.catch_up()
        projector.rebuild("runs")
        projector.status()

The views are tables in the log's own database (`stepstone_view_runs`, ...), to be read with
plain SQL; docs/projections.md describes their columns.
"""

from projections.catalog import VIEW_CLASSES
from projections.errors import (
    EventNotProjectableError,
    ProjectionsError,
    UnknownViewError,
    ViewSchemaError,
    ViewStoreError,
)
from projections.projector import Projector, ViewStatus, catch_up

VIEWS: tuple[str, ...] = tuple(VIEW_CLASSES)

__all__ = [
    "VIEWS",
    "EventNotProjectableError",
    "ProjectionsError",
    "Projector",
    "UnknownViewError",
    "ViewSchemaError",
    "ViewStatus",
    "ViewStoreError",
    "catch_up",
]
