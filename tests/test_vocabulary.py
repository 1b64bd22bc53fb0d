"""One vocabulary: a status or event class added in `engine` fails here until every consumer
(the views, the API's models, both metrics, the dashboard) handles it.

The engine declares the run statuses and the events (`engine.status`, `engine.events`); the
consumers read them from there. Where a consumer must still decide something per event or per
status (a view: apply it or pass over it), these tests hold it to a decision for each one.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.core import Metric

from api.app import DASHBOARD, create_app
from api.deps import ApiOptions
from api.metrics import ViewsCollector
from api.models import Hotspot, Run, StepAttempt, WorkflowStats
from api.queries import (
    ATTEMPT_COLUMNS,
    HOTSPOT_COLUMNS,
    RUN_COLUMNS,
    STATS_COLUMNS,
    run_fields,
)
from api.settings import ApiSettings
from engine import Settings
from engine import events as ev
from engine.status import OBSERVED, RECORDED, STATUS_AFTER, TERMINAL, RunStatus
from engine.storage import parse_store_url
from engine.store import RunStore
from engine.workers.metrics import WorkerMetrics
from projections import VIEW_TABLES, Projector
from projections.catalog import VIEW_CLASSES
from projections.stats import STATUSES
from test_aggregate import CASES

STATUS_NAMES = [s.value for s in RunStatus]
EVENT_NAMES = [e.__name__ for e in ev.EVENT_TYPES]


# -- views --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", VIEW_CLASSES)
def test_every_view_handles_or_ignores_each_event_class(name: str) -> None:
    view = VIEW_CLASSES[name]
    assert view.handles & view.ignores == frozenset(), f"{name}: both handles and ignores"
    undecided = set(ev.EVENT_TYPES) - view.handles - view.ignores
    assert not undecided, f"the {name} view neither handles nor ignores " + ", ".join(
        sorted(e.__name__ for e in undecided))
    assert view.handles | view.ignores == set(ev.EVENT_TYPES)


def test_the_views_follow_every_status() -> None:
    # The runs view takes each status from the engine's table; the statistics count each.
    assert set(STATUS_AFTER) <= VIEW_CLASSES["runs"].handles
    assert set(STATUS_AFTER) <= VIEW_CLASSES["workflow_stats"].handles
    assert list(STATUSES) == [s.value for s in RECORDED]
    assert set(STATUSES) <= set(VIEW_TABLES["workflow_stats"].column_names)
    assert set(RECORDED) == set(STATUS_AFTER.values()), "a status no event leads to"
    assert set(RunStatus) == set(RECORDED) | OBSERVED


# Every event also stamps the run's row with its time, worker and position: that is not a case.
_STAMPS = {"runs": {"updated_at", "worker", "last_position"}}


def _tables(projector: Projector) -> dict[str, list[tuple[Any, ...]]]:
    out: dict[str, list[tuple[Any, ...]]] = {}
    with projector.db.transaction() as tx:
        for view in projector.views:
            skip = _STAMPS.get(view.name, set())
            for bound in view.bound:
                names = [c for c in bound.spec.column_names if c not in skip]
                rows = tx.fetch(f"SELECT {', '.join(names)} FROM {bound.qname}")
                out[bound.name] = sorted(tuple(r) for r in rows)
    return out


@pytest.mark.parametrize("event_class", [e for e in ev.EVENT_TYPES if e is not ev.RunStarted],
                         ids=lambda e: e.__name__)
def test_an_ignored_event_leaves_the_view_as_it_was(
    event_class: type[ev.RunEvent], tmp_path: Path
) -> None:
    """A view that says it passes over an event does: its rows are the same with the event
    projected as without (the run's time stamps aside). Keeps `ignores` honest."""
    make, command, _ = CASES[event_class]
    store = RunStore(parse_store_url(f"sqlite:///{tmp_path / 'log.db'}"))
    try:
        with Projector(store) as projector:
            run = make()
            store.save_run(run)
            projector.catch_up()
            before = _tables(projector)
            command(run)
            assert type(run.pending_events[-1]) is event_class
            store.save_run(run)
            projector.catch_up()
            after = _tables(projector)
            ignoring = [v for v in projector.views if event_class in v.ignores]
            for view in ignoring:
                for bound in view.bound:
                    assert after[bound.name] == before[bound.name], (view.name, bound.name)
    finally:
        store.close()


# -- the API's models and metrics ---------------------------------------------------------------
def test_the_api_reads_view_columns_by_name() -> None:
    """Each model is made from the columns of its name in the view's exported spec; a run's
    row zips with every field of `Run`, in its order."""
    assert set(RUN_COLUMNS) <= set(VIEW_TABLES["runs"].column_names)
    assert set(Run.model_fields) - set(RUN_COLUMNS) == {"steps_expected", "progress",
                                                        "last_error", "held_by",
                                                        "last_seen_at"}
    row = [None] * (len(Run.model_fields) + 5)
    assert list(run_fields(row)) == list(Run.model_fields)
    for model, view, columns in ((StepAttempt, "step_attempts", ATTEMPT_COLUMNS),
                                 (WorkflowStats, "workflow_stats", STATS_COLUMNS)):
        assert columns == tuple(model.model_fields)
        assert set(columns) <= set(VIEW_TABLES[view].column_names)
    assert set(HOTSPOT_COLUMNS) | {"interruptions"} == set(Hotspot.model_fields)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    """An app with a token: nothing connects until a route reads runs, which these do not."""
    app = create_app(Settings(database_url=f"sqlite:///{tmp_path / 'store.db'}"),
                     ApiOptions(allowed_hosts=("testserver",)),
                     api=ApiSettings(api_token="vocabulary-token-0123456789"))
    with TestClient(app) as c:
        yield c


def test_the_api_status_enum_is_the_engines(client: TestClient) -> None:
    assert Run.model_fields["status"].annotation is RunStatus
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    assert schemas["RunStatus"]["enum"] == STATUS_NAMES
    assert [f for f in WorkflowStats.model_fields if f in STATUS_NAMES] == list(STATUSES)


def test_the_api_metrics_count_runs_in_every_status() -> None:
    counts = {status: i + 2 for i, status in enumerate(STATUSES)}

    class Reads:
        def workflow_stats(self) -> list[WorkflowStats]:
            return [WorkflowStats(workflow="wf", runs=sum(counts.values()), **counts,
                                  duration_p50_s=None, duration_p95_s=None)]

        def interrupted_counts(self) -> dict[str, int]:
            return {"wf": 1}  # one of the runs the views call running: no live holder

        def hotspot_rows(self, **_: Any) -> list[Any]:
            return []

        def head(self) -> int:
            return 0

        def positions(self) -> dict[str, int]:
            return {}

    metrics: list[Metric] = list(ViewsCollector(Reads()).collect())  # type: ignore[arg-type]
    runs = next(m for m in metrics if m.name == "stepstone_runs")
    running = RunStatus.RUNNING.value
    expected = {**counts, running: counts[running] - 1, RunStatus.INTERRUPTED.value: 1}
    assert {s.labels["status"]: s.value for s in runs.samples} == expected
    assert set(expected) == set(STATUS_NAMES)  # every status of the engine, observed ones too


@pytest.mark.parametrize("event_class", [e for e, s in STATUS_AFTER.items() if s in TERMINAL],
                         ids=lambda e: e.__name__)
def test_the_worker_metrics_count_every_end_of_a_run(event_class: type[ev.RunEvent]) -> None:
    make, command, _ = CASES[event_class]
    run = make()
    command(run)
    metrics = WorkerMetrics()
    metrics.observe(run, run.pending_events[-1:])
    status = STATUS_AFTER[event_class].value
    labels = {"workflow": run.state.workflow, "status": status}
    assert metrics.registry.get_sample_value("stepstone_runs_finished_total", labels) == 1


# -- the dashboard ------------------------------------------------------------------------------
def test_the_vocabulary_is_served_from_the_engine_without_a_token(client: TestClient) -> None:
    r = client.get("/vocabulary.json")  # no Authorization header: it holds no run data
    assert r.status_code == 200
    body = r.json()
    assert [s["name"] for s in body["run_statuses"]] == STATUS_NAMES
    assert {s["name"] for s in body["run_statuses"] if s["terminal"]} == {
        s.value for s in TERMINAL}
    assert [e["name"] for e in body["events"]] == EVENT_NAMES
    assert {e["name"]: e["status_after"] for e in body["events"]} == {
        e.__name__: (STATUS_AFTER[e].value if e in STATUS_AFTER else None)
        for e in ev.EVENT_TYPES}
    assert client.get("/runs").status_code == 401  # the run data still needs the token


def test_the_dashboard_keeps_no_status_list_of_its_own() -> None:
    """The page lists statuses from /vocabulary.json: it may single one out by name
    (`=== "running"`) but holds no list (array literal, option) of them, and every event it
    names is one the engine has. A status with no colour in app.css gets the plain pill's."""
    script = (DASHBOARD / "app.js").read_text()
    page = (DASHBOARD / "index.html").read_text()
    assert 'getJSON("/vocabulary.json")' in script
    statuses = "|".join(STATUS_NAMES)
    listed = re.search(rf'\[[^\]\[]*"({statuses})"[^\]\[]*\]', script)
    assert listed is None, f"app.js lists statuses: {listed and listed.group(0)}"
    assert not re.search(rf"<option>({statuses})</option>", page)
    named = set(re.findall(r'"((?:Run|Step|Timer|Patch)[A-Z][A-Za-z]+)"', script))
    assert named <= set(EVENT_NAMES), named - set(EVENT_NAMES)
    css = (DASHBOARD / "app.css").read_text()
    assert re.search(r"\.pill \{[^}]*background:", css), "no fallback colour for a pill"
