"""Log records that say which run, step, attempt, worker and run version they concern.

Every record of the `stepstone.*` loggers gets the fields `run_id`, `workflow`, `step_key`,
`attempt`, `worker_id` and `run_version`, taken from the run driving the current thread (a
ContextVar, so fan-out branches and step code see theirs) unless the call passed them in
`extra`. With `--log-format json` each record is one JSON object carrying them, so logs join
the event history on (run_id, run_version).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from engine.context import current_runner, current_step

FIELDS = ("run_id", "workflow", "step_key", "attempt", "worker_id", "run_version")

_bound: ContextVar[dict[str, Any] | None] = ContextVar("stepstone_log_fields", default=None)


@contextmanager
def bound(**fields: Any) -> Iterator[None]:
    """Fields for the records of this thread while no run is driving it (a worker's claim)."""
    token = _bound.set({**(_bound.get() or {}), **fields})
    try:
        yield
    finally:
        _bound.reset(token)


class RunContextFilter(logging.Filter):
    """Adds the run fields to a record; attach it to your own handlers to tag your records."""

    def filter(self, record: logging.LogRecord) -> bool:
        runner: Any = current_runner.get()
        step = current_step.get()
        known = record.__dict__
        if runner is not None:
            run = runner.run
            values: dict[str, Any] = {
                "run_id": str(run.id),
                "workflow": run.state.workflow,
                "worker_id": runner.worker_id,
                "run_version": run.version,
            }
        else:
            values = dict(_bound.get() or {})
        if step is not None:
            values["step_key"] = step.step_key
            values["attempt"] = step.attempt
        for name in FIELDS:
            if name not in known:
                known[name] = values.get(name)
        return True


_FILTER = RunContextFilter()


def get_logger(name: str) -> logging.Logger:
    """A `stepstone.*` logger whose records carry the run fields."""
    logger = logging.getLogger(name)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    return logger


class TextFormatter(logging.Formatter):
    """Plain lines that name the run: `... stepstone.events: run <id>: RunCompleted`.

    A worker's records interleave many runs, so a line without the run id cannot be followed
    back to `stepstone history`. Messages that already name their run are left alone.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802  (logging's name)
        run_id = getattr(record, "run_id", None)
        if run_id and run_id not in record.message:
            record = logging.makeLogRecord({**record.__dict__,
                                            "message": f"run {run_id}: {record.message}"})
        return super().formatMessage(record)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def text_formatter() -> logging.Formatter:
    return TextFormatter(TEXT_FORMAT)


def json_formatter() -> logging.Formatter:
    """One JSON object per record (python-json-logger over orjson), run fields included."""
    from pythonjsonlogger.orjson import OrjsonFormatter

    return OrjsonFormatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s",
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        timestamp=False,
    )
