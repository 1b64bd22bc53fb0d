"""`stepstone history` and `stepstone runs`: reading runs back, streamed and filtered.

Both print as they read: `history` a page of events at a time (its first line comes after one
query, whatever the run's size, and memory stays flat), `runs` one run at a time, newest first.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from datetime import UTC, datetime

import click

from engine import HistoryEntry, RunStatus
from engine.audit.history import event_classes
from stepstone import output
from stepstone.common import fail, open_engine, parse_run_id, store_options
from stepstone.moments import parse_past
from stepstone.timeline import show_timeline


def _names(text: str | None) -> list[str]:
    return [n.strip() for n in (text or "").split(",") if n.strip()]


@click.command()
@click.argument("run_id")
@click.option("--limit", type=click.IntRange(1), help="At most N events.")
@click.option("--tail", type=click.IntRange(1), help="Only the last N events.")
@click.option("--after", type=click.IntRange(0), metavar="POSITION",
              help="Only events past this global log position (as printed in POS).")
@click.option("--type", "type_names", metavar="EVENT[,EVENT]",
              help="Only events of these types, e.g. StepFailed,RunFailed.")
@click.option("--follow", is_flag=True,
              help="Then print new events as they are committed, until the run ends or Ctrl-C.")
@store_options
def history(run_id: str, limit: int | None, tail: int | None, after: int | None,
            type_names: str | None, follow: bool, database_url: str | None,
            as_json: bool) -> None:
    """Show a run's events (its audit trail) with their global positions, streamed."""
    rid = parse_run_id(run_id)
    try:
        types = event_classes(_names(type_names))
    except ValueError as bad:
        fail(f"--type: {bad}")
    with open_engine(database_url, create=False) as engine:
        entries = engine.iter_history(rid, limit=limit, tail=tail, after=after, types=types,
                                      follow=follow, summarize=not as_json)
        try:
            if as_json:
                for entry in entries:
                    output.emit_json({k: v for k, v in entry.__dict__.items()
                                      if k not in ("summary", "kind")})
            else:
                show_timeline(_flushed(entries))
        except KeyboardInterrupt:  # --follow ends with Ctrl-C; what was printed stands
            sys.exit(0)


def _flushed(entries: Iterator[HistoryEntry]) -> Iterator[HistoryEntry]:
    """Entries handed on as they come, standard output flushed after each one: a follower
    sees every event the moment it is read, not when a buffer fills."""
    for entry in entries:
        yield entry
        sys.stdout.flush()


@click.command()
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1))
@click.option("--status", "status_names", metavar="STATUS[,STATUS]",
              help=f"Only runs in these statuses ({', '.join(s.value for s in RunStatus)}).")
@click.option("--workflow", help="Only the runs of this workflow (its name).")
@click.option("--since", metavar="DATE|DURATION",
              help="Only runs started since then: 2026-01-31, 2026-01-31T12:00:00Z or 7d.")
@store_options
def runs(limit: int, status_names: str | None, workflow: str | None, since: str | None,
         database_url: str | None, as_json: bool) -> None:
    """List the most recent runs, newest first."""
    known = {s.value: s for s in RunStatus}
    wanted = _names(status_names)
    unknown = [n for n in wanted if n not in known]
    if unknown:
        fail(f"--status: unknown status {', '.join(unknown)}; known statuses: "
             f"{', '.join(known)}")
    try:
        start = parse_past(since, now=datetime.now(UTC), option="--since") if since else None
    except ValueError as e:
        fail(str(e))
    with open_engine(database_url, create=False) as engine:
        infos = engine.find_runs(limit=limit, statuses={known[n] for n in wanted},
                                 workflow=workflow, since=start)
        if as_json:
            output.emit_json([output.info_dict(i) for i in infos])
        else:
            output.show_runs(list(infos))
