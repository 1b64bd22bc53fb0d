"""Prometheus metrics of a worker, counted from the events it writes (and its claims).

Counting from saved events, not from code paths, keeps the figures equal to what the log says
(the tests compare them event for event). Each `WorkerMetrics` has its own registry, so several
engines in one process (tests, embedding apps) do not collide; `serve` exposes it over HTTP.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from engine import events as ev
from engine.aggregate import WorkflowRun
from engine.status import TERMINAL, status_after

_STEP_LABELS = ("workflow", "step")


def _step_name(key: str) -> str:
    return key.rpartition("#")[0] or key


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.steps_started = Counter("stepstone_steps_started", "Step attempts started",
                                     _STEP_LABELS, registry=r)
        self.steps_completed = Counter("stepstone_steps_completed", "Step attempts completed",
                                       _STEP_LABELS, registry=r)
        self.steps_failed = Counter("stepstone_steps_failed", "Step attempts failed",
                                    _STEP_LABELS, registry=r)
        self.steps_preempted = Counter("stepstone_steps_preempted",
                                       "Step attempts stopped by preemption", _STEP_LABELS,
                                       registry=r)
        self.retries = Counter("stepstone_step_retries",
                               "Step attempts after the first (any cause)", _STEP_LABELS,
                               registry=r)
        self.checkpoints = Counter("stepstone_checkpoints", "Checkpoints recorded",
                                   _STEP_LABELS, registry=r)
        self.step_seconds = Histogram(
            "stepstone_step_duration_seconds", "Duration of finished step attempts",
            (*_STEP_LABELS, "outcome"), registry=r,
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60, 300, 1800, 3600),
        )
        self.runs_finished = Counter("stepstone_runs_finished", "Runs that ended here",
                                     ("workflow", "status"), registry=r)
        self.runs_preempted = Counter("stepstone_runs_preempted", "Runs stopped by preemption",
                                      ("workflow",), registry=r)
        self.takeovers = Counter("stepstone_lease_takeovers",
                                 "Runs claimed from a worker whose lease had expired",
                                 ("workflow",), registry=r)
        self.in_flight = Gauge("stepstone_runs_in_flight", "Runs this worker drives now",
                               registry=r)

    def observe(self, run: WorkflowRun, events: Sequence[Any]) -> None:
        workflow = run.state.workflow
        for e in events:
            match e:
                case ev.StepStarted():
                    labels = (workflow, _step_name(e.step_key))
                    self.steps_started.labels(*labels).inc()
                    if e.attempt > 1:
                        self.retries.labels(*labels).inc()
                case ev.StepCompleted():
                    labels = (workflow, _step_name(e.step_key))
                    self.steps_completed.labels(*labels).inc()
                    self.step_seconds.labels(*labels, "completed").observe(e.duration_s)
                case ev.StepFailed():
                    labels = (workflow, _step_name(e.step_key))
                    self.steps_failed.labels(*labels).inc()
                    self.step_seconds.labels(*labels, "failed").observe(e.duration_s)
                case ev.StepPreempted():
                    self.steps_preempted.labels(workflow, _step_name(e.step_key)).inc()
                case ev.StepCheckpointed():
                    self.checkpoints.labels(workflow, _step_name(e.step_key)).inc()
                case ev.RunPreempted():
                    self.runs_preempted.labels(workflow).inc()
                case _:
                    status = status_after(type(e))
                    if status in TERMINAL:  # whichever event ends a run, however many
                        self.runs_finished.labels(workflow, str(status)).inc()

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        """Expose /metrics on `host:port` from a daemon thread."""
        start_http_server(port, addr=host, registry=self.registry)
