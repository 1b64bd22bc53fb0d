"""OpenTelemetry spans, when the `otel` extra is installed; nothing at all otherwise.

A span per drive of a run (a run resumed by three workers has three, each with the run id and
resume reason) and a child span per step attempt, with checkpoints and preemptions as span
events. Spans are current while step code runs, so `opentelemetry.trace.get_current_span()`
inside a step gives its attempt's span and outgoing calls can carry the trace context. Until
something imports `opentelemetry.trace` (configuring a provider does) the tracer is a no-op.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any


class _NoSpan:
    def add_event(self, name: str, attributes: dict[str, Any] | None = None) -> None:
        return None


_NO_SPAN = _NoSpan()


class Tracer:
    """The engine's view of tracing: run spans, step spans, span events."""

    def __init__(self) -> None:
        self._trace: Any = None
        self._tracer: Any = None
        self._unset: tuple[type, ...] = ()

    @property
    def enabled(self) -> bool:
        """Whether spans are made now: OpenTelemetry is loaded and a provider is configured.

        Configuring a provider imports `opentelemetry.trace`; until something has, no span can
        be recorded, so the engine never imports it itself (it cost every start-up ~10 ms).
        """
        if self._trace is None:
            trace = sys.modules.get("opentelemetry.trace")
            if trace is None:
                return False
            self._trace = trace
            self._tracer = trace.get_tracer("stepstone")
            # The API installed without a provider configured: spans would record nothing
            # and still cost ~10 us each, so the engine makes none.
            self._unset = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
        return not isinstance(self._trace.get_tracer_provider(), self._unset)

    def run_span(self, attributes: dict[str, Any], name: str) -> AbstractContextManager[Any]:
        if not self.enabled:
            return nullcontext(_NO_SPAN)
        return self._span(name, attributes)

    def step_span(self, attributes: dict[str, Any], name: str) -> AbstractContextManager[Any]:
        if not self.enabled:
            return nullcontext(_NO_SPAN)
        return self._span(name, attributes)

    @contextmanager
    def _span(self, name: str, attributes: dict[str, Any]) -> Iterator[Any]:
        with self._tracer.start_as_current_span(
            name, attributes={k: v for k, v in attributes.items() if v is not None},
            record_exception=False, set_status_on_exception=False,
        ) as span:
            yield span

    def event(self, name: str, attributes: dict[str, Any]) -> None:
        """A span event on the current span (a checkpoint, a preemption)."""
        if not self.enabled:
            return
        self._trace.get_current_span().add_event(name, attributes)

    def outcome(self, span: Any, outcome: str, error: BaseException | None = None) -> None:
        if span is _NO_SPAN:
            return
        span.set_attribute("stepstone.outcome", outcome)
        if error is not None:
            from opentelemetry.trace import Status, StatusCode

            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))


TRACER = Tracer()
