"""`stepstone history`: a run's events as a timeline a person can read after the fact."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import click

from engine import HistoryEntry
from engine.events import EVENT_TYPES
from stepstone.output import cut

_EVENT_WIDTH = max(len(c.__name__) for c in EVENT_TYPES)  # the longest name fits


def show_timeline(entries: Iterable[HistoryEntry]) -> None:
    """Print entries as they come (a stream is never held whole); elapsed times count from
    the first one shown."""
    start: datetime | None = None
    for e in entries:
        if start is None:
            start = e.timestamp
            click.echo(
                f"{'POS':>7} {'VER':>5}  {'TIME (UTC)':23} {'+ELAPSED':>10}  "
                f"{'EVENT':{_EVENT_WIDTH}} {'STEP':18} {'ATT':>3}  {'WORKER':14} DETAILS"
            )
        f = e.fields
        attempt = f.get("attempt")
        click.echo(
            f"{e.position:>7} {e.version:>5}  {e.timestamp:%Y-%m-%d %H:%M:%S.%f}"[:-3]
            + f" {_elapsed(start, e.timestamp):>10}  {e.event_type:{_EVENT_WIDTH}} "
            f"{cut(f.get('step_key') or '', 18):18} {attempt if attempt else '':>3}  "
            f"{cut(e.worker_id, 14):14} {e.summary}"
        )


def _elapsed(start: datetime, at: datetime) -> str:
    seconds = (at - start).total_seconds()
    if seconds < 60:
        return f"+{seconds:.3f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"+{hours}:{minutes:02}:{secs:02}"
