"""Workflows for the message tests: a run that waits for an approval, and variations.

`hold_dir`, when given, is a directory where the step after the approval writes a marker and,
on its first attempt only, then waits for ever: a test kills the process there, after the
message was consumed and before the run finished.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from engine import publish, receive, sleep, step, step_context, workflow


@step
def plan(table: str) -> dict[str, Any]:
    return {"table": table, "rows": len(table) * 1000}


@step
def cut_over(plan: dict[str, Any], decision: Any, hold_dir: str | None) -> str:
    if hold_dir is not None:
        marker = Path(hold_dir) / f"cut_over.{step_context().attempt}"
        marker.write_text("started")
        if step_context().attempt == 1:
            time.sleep(3600)  # killed here by the test
    return f"{plan['table']}: {decision}"


@workflow("approval")
def approval(table: str, timeout_s: float | None = None,
             hold_dir: str | None = None) -> dict[str, Any]:
    """Plan a migration, wait for a person's approval, then cut over (or give up)."""
    p = plan(table)
    decision = receive("approval", timeout=timeout_s)
    if decision is None:
        return {"plan": p, "approved": None, "result": "timed out"}
    return {"plan": p, "approved": decision, "result": cut_over(p, decision, hold_dir)}


@workflow("two_messages")
def two_messages(timeout_s: float = 0.5) -> list[Any]:
    """Two receives on one topic, then one on another: order and exactly-once per message."""
    return [receive("a", timeout=timeout_s), receive("a", timeout=timeout_s),
            receive("b", timeout=timeout_s)]


@workflow("receive_then_sleep")
def receive_then_sleep(seconds: float = 3600) -> Any:
    """The payload must come back from the log when the run resumes after its sleep."""
    got = receive("go")
    sleep(seconds)
    return got


@step
def export(rows: int) -> str:
    return f"export-{rows}.csv"


@workflow("exporter")
def exporter(rows: int = 3) -> str:
    """Publishes progress and where its file is, then waits for a go before it ends."""
    publish("stage", "exporting")
    path = export(rows)
    publish("file", {"path": path})
    publish("stage", "exported")
    receive("finish")
    return path
