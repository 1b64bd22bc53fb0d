"""`stepstone history`: a run's events as a timeline a person can read after the fact."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import click
import orjson

from engine import HistoryEntry
from stepstone.output import cut

_HIDDEN = {"step_key", "attempt", "step_name"}


def show_timeline(entries: list[HistoryEntry]) -> None:
    if not entries:
        return
    start = entries[0].timestamp
    click.echo(
        f"{'POS':>7} {'VER':>5}  {'TIME (UTC)':23} {'+ELAPSED':>10}  {'EVENT':17} "
        f"{'STEP':18} {'ATT':>3}  {'WORKER':14} DETAILS"
    )
    for e in entries:
        f = e.fields
        attempt = f.get("attempt")
        click.echo(
            f"{e.position:>7} {e.version:>5}  {e.timestamp:%Y-%m-%d %H:%M:%S.%f}"[:-3]
            + f" {_elapsed(start, e.timestamp):>10}  {e.event_type:17} "
            f"{cut(f.get('step_key') or '', 18):18} {attempt if attempt else '':>3}  "
            f"{cut(e.worker_id, 14):14} {details(e.event_type, f)}"
        )


def _elapsed(start: datetime, at: datetime) -> str:
    seconds = (at - start).total_seconds()
    if seconds < 60:
        return f"+{seconds:.3f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"+{hours}:{minutes:02}:{secs:02}"


def _short(value: Any, limit: int = 60) -> str:
    text = orjson.dumps(value).decode()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def details(kind: str, f: dict[str, Any]) -> str:
    """The part of an event a reader needs, by event type; other types list their fields."""
    took = f"took {f['duration_s']:.3f}s" if isinstance(f.get("duration_s"), float) else ""
    match kind:
        case "RunStarted":
            text = (f"{f['workflow']} v{f['workflow_version']} code {f['code_fingerprint']} "
                    f"input {_short(f['input'])}")
            if f.get("idempotency_key"):
                text += f" key {f['idempotency_key']!r}"
            if f.get("parent_run_id"):
                text += f" forked from {f['parent_run_id']} at {f['forked_from_step']}"
            return text
        case "RunResumed":
            return f"reason {f['reason']}"
        case "StepStarted":
            return ""
        case "StepCheckpointed":
            progress = (f" progress {f['progress_done']}/{f['progress_total']}"
                        if f.get("progress_total") is not None else "")
            return f"checkpoint #{f['sequence']}{progress} state {_short(f['state'], 50)}"
        case "StepCompleted":
            return f"{took} output {_short(f['output'])}"
        case "StepFailed":
            retry = (f"retry at {f['next_attempt_at']}" if f.get("retryable")
                     else "not retried")
            return f"{f['error_type']}: {_short(f['message'], 60)[1:-1]} ({took}; {retry})"
        case "StepPreempted":
            return f"{f['reason']} (last checkpoint #{f['last_checkpoint_sequence']})"
        case "StepReused":
            return f"output of run {f['reused_from']} reused: {_short(f['output'])}"
        case "RunCompleted":
            return f"output {_short(f['output'])}"
        case "RunFailed":
            return f"{f['error_type']}: {f['message']}"
        case "RunParked":
            return f"PARKED: {f['reason']}"
        case "PatchMarked":
            return f"took the new path of patch {f['change_id']!r}"
        case "RunCancelled":
            return f"by {f['by']}: {f['reason']}"
        case "RunPreempted":
            return f"reason {f['reason']}"
    text = " ".join(f"{k}={_short(v, 40)}" for k, v in f.items()
                    if v is not None and k not in _HIDDEN)
    return cut(text, 160)
