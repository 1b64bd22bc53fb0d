"""One log record per event the engine writes, so the log tells the run's story.

Called after each successful save with the events it committed (never before: a record must not
claim an event that a failed save did not write). Step-level events log at DEBUG, run-level ones,
failed attempts and preemptions at INFO, a failed run at WARNING; a disabled level costs one
check per save. These records are the only ones for those events: the driver does not log a
failure again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from engine import events as ev
from engine.aggregate import WorkflowRun
from engine.logcontext import get_logger

log = get_logger("stepstone.events")

_DEBUG = (ev.StepStarted, ev.StepCompleted, ev.StepCheckpointed, ev.TimerFired)


def log_events(run: WorkflowRun, events: Sequence[Any]) -> None:
    if not log.isEnabledFor(logging.INFO):  # the least any event logs at
        return
    for event in events:
        kind = type(event).__name__
        level = (logging.DEBUG if isinstance(event, _DEBUG) else
                 logging.WARNING if isinstance(event, ev.RunFailed) else logging.INFO)
        if not log.isEnabledFor(level):
            continue
        key = getattr(event, "step_key", None)
        attempt = getattr(event, "attempt", None)
        detail = event.summary()
        log.log(
            level,
            "%s%s%s%s",
            kind,
            f" {key}" if key else "",
            f" attempt {attempt}" if attempt else "",
            f": {detail}" if detail else "",
            extra={
                "run_id": str(run.id),
                "workflow": run.state.workflow,
                "step_key": key,
                "attempt": attempt,
                "worker_id": event.worker_id,
                "run_version": event.originator_version,
                "event": kind,
            },
        )
