"""Values a run publishes while it runs: `publish(key, value)` in a body, read from outside.

A caller often needs one fact from a long run before it ends ("the export file is ready, here
is its path"). `publish` records `ValuePublished` in the run's log, so the value is as durable
and auditable as a step's output, and replay records it once: it takes a position in the
body's history like a step (`publish#0`, `publish#1`...). The event is held like a step's
completion and committed with whatever the run records next (the next step's start, a wait,
the end), so it costs no commit of its own and is visible before that next unit runs.

`read_published(run_id, key, wait=...)` reads the latest value from the run's log (exact,
never a view); the API's `/runs/{id}/published` serves the `published` view.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any
from uuid import UUID

import orjson

from engine.context import current_runner
from engine.errors import EngineError
from engine.messages import check_name, encode_payload

if TYPE_CHECKING:
    from engine.engine import Engine

__all__ = ["NotPublishedError", "publish", "read_published"]


class NotPublishedError(EngineError):
    """The run has not published the key (yet): it ended without it, or the wait ran out."""

    def __init__(self, run_id: UUID, key: str, status: str) -> None:
        self.run_id = run_id
        self.key = key
        self.status = status
        ended = status in ("completed", "failed", "cancelled", "timed_out")
        hint = ("it ended without publishing it" if ended
                else "wait longer (wait=seconds) or check the key the workflow publishes")
        super().__init__(f"run {run_id} ({status}) has not published {key!r}; {hint}")


def publish(key: str, value: Any) -> None:
    """Record `value` as the run's latest value for `key` (JSON, at most
    `MAX_PAYLOAD_BYTES`); readers see it once the run records its next unit. Outside a
    workflow run it does nothing, so workflow code stays testable as plain Python."""
    check_name(key, "key")
    encoded = orjson.loads(encode_payload(value))  # the value readers will get, as recorded
    runner: Any = current_runner.get()
    if runner is None or not hasattr(runner, "next_position"):
        return
    step_key, recorded = runner.next_position("publish")
    if recorded is not None:
        return  # replay: recorded already
    runner.record(runner.run.publish, step_key, key, encoded)


def read_published(engine: Engine, run_id: UUID, key: str, *,
                   wait: float | None = None, poll_s: float = 0.1) -> Any:
    """The latest value the run published for `key`, from its log. With `wait` (seconds),
    wait up to that long for it; `NotPublishedError` if it is not there (and the run ended,
    or the wait ran out), `RunNotFoundError` for an unknown run."""
    check_name(key, "key")
    deadline = time.monotonic() + (wait or 0.0)
    while True:
        run = engine.store.load(run_id)
        if key in run.state.published:
            return run.state.published[key]
        if run.status.is_terminal or time.monotonic() >= deadline:
            raise NotPublishedError(run_id, key, run.status.value)
        time.sleep(poll_s)

