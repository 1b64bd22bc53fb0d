"""`/metrics`: Prometheus text from `prometheus_client`, on a registry of the app's own.

Gauges are read from the views at scrape time (runs by status, step outcomes per workflow and
step, projection lag) by a collector, so a scrape always shows what the views hold now and
the app keeps no counters that could drift from them. Request latency is a histogram filled
by a small ASGI middleware, labelled by route template (not raw path: run ids would make a
series per run).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.queries import Reads
from api.readonly_store import StoreReadError
from engine.status import RECORDED, RunStatus

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class ViewsCollector(Collector):
    """Reads the views on each scrape; a store that cannot be read yields `stepstone_up 0`."""

    def __init__(self, reads: Reads) -> None:
        self.reads = reads

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("stepstone_store_up", "1 if the store answered this scrape")
        try:
            metrics = list(self._read())
        except StoreReadError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from metrics

    def _read(self) -> Iterator[Metric]:
        runs = GaugeMetricFamily("stepstone_runs", "Runs by workflow and status",
                                 labels=["workflow", "status"])
        interrupted = self.reads.interrupted_counts()
        for stats in self.reads.workflow_stats():
            for status in RECORDED:  # the engine's statuses, each a field of WorkflowStats
                count = getattr(stats, status.value)
                if status is RunStatus.RUNNING:  # the log says running; a lease says who is
                    count -= interrupted.get(stats.workflow, 0)
                runs.add_metric([stats.workflow, status.value], count)
            runs.add_metric([stats.workflow, RunStatus.INTERRUPTED.value],
                            interrupted.get(stats.workflow, 0))
        yield runs
        names = ("attempts", "retries", "failures", "preemptions", "crashes", "invalidated")
        families = {
            name: GaugeMetricFamily(f"stepstone_step_{name}", f"Step {name} by workflow and step",
                                    labels=["workflow", "step"])
            for name in names
        }
        interruptions = GaugeMetricFamily(
            "stepstone_step_interruptions", "Preemptions plus crashes by workflow and step",
            labels=["workflow", "step"])
        for spot in self.reads.hotspot_rows(workflow=None, limit=10_000):
            for name in names:
                families[name].add_metric([spot.workflow, spot.step_name], getattr(spot, name))
            interruptions.add_metric([spot.workflow, spot.step_name], spot.interruptions)
        yield from families.values()
        yield interruptions
        head = self.reads.head()
        position = GaugeMetricFamily("stepstone_projection_position",
                                     "The log position each view has applied", labels=["view"])
        lag = GaugeMetricFamily("stepstone_projection_lag_events",
                                "Log head minus the view's position", labels=["view"])
        for view, at in self.reads.positions().items():
            position.add_metric([view], at)
            lag.add_metric([view], max(0, head - at))
        yield GaugeMetricFamily("stepstone_log_head", "The log's last position", value=head)
        yield position
        yield lag


def new_registry(reads: Reads) -> tuple[CollectorRegistry, Histogram]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ViewsCollector(reads))
    latency = Histogram(
        "stepstone_api_request_duration_seconds",
        "Time to answer an API request, by route template, method and status",
        labelnames=["route", "method", "status"],
        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        registry=registry,
    )
    return registry, latency


class LatencyMiddleware:
    """Times each HTTP request up to its response's start (streams count until they open)."""

    def __init__(self, app: ASGIApp, histogram: Histogram) -> None:
        self.app = app
        self.histogram = histogram

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def timed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                route = getattr(scope.get("route"), "path", None) or "unmatched"
                method = scope["method"] if scope["method"] in _METHODS else "OTHER"
                self.histogram.labels(route, method, str(status)).observe(
                    time.perf_counter() - started)
            await send(message)

        await self.app(scope, receive, timed_send)
