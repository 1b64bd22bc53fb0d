"""The views, by the name the CLI and the API use for them."""

from __future__ import annotations

from projections.attempts import StepAttemptsView
from projections.hotspots import HotspotsView
from projections.published import PublishedView
from projections.runs import RunsView
from projections.sql import Table
from projections.stats import WorkflowStatsView
from projections.view import View

VIEW_CLASSES: dict[str, type[View]] = {
    view.name: view for view in (RunsView, StepAttemptsView, HotspotsView, WorkflowStatsView,
                                 PublishedView)
}

VIEW_TABLES: dict[str, Table] = {name: view.tables[0] for name, view in VIEW_CLASSES.items()}
"""Each view's public table, by view name: its columns' names and types, for readers (the API)
that select columns by name instead of restating them."""
