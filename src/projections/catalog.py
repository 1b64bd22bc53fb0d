"""The views, by the name the CLI and the API use for them."""

from __future__ import annotations

from projections.attempts import StepAttemptsView
from projections.hotspots import HotspotsView
from projections.runs import RunsView
from projections.stats import WorkflowStatsView
from projections.view import View

VIEW_CLASSES: dict[str, type[View]] = {
    view.name: view for view in (RunsView, StepAttemptsView, HotspotsView, WorkflowStatsView)
}
