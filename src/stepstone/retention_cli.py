"""`stepstone prune` and `stepstone import`: retention with archives, and restoring them.

Bad input (a cutoff in the future, a duration that does not parse, an unfinished status, an
archive path that exists or cannot be written) exits 2 before anything is read or deleted; so
does an archive that fails verification, or a view rebuild in progress.
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from pathlib import Path

import click
from tqdm import tqdm

from engine import RunStatus
from engine.audit.archive import ArchiveError, import_archive, verify_archive
from engine.audit.retention import Policy
from engine.status import TERMINAL
from stepstone import output
from stepstone.common import EXIT_FAILED, fail, open_engine, store_options
from stepstone.moments import parse_past
from stepstone.pruning import PruneReport, RebuildInProgressError, prune

TERMINAL_ORDER = [s for s in RunStatus if s in TERMINAL]


def _archive_path(text: str) -> Path:
    """The archive's path, checked writable now: a prune must not delete and then fail."""
    path = Path(text)
    if path.exists():
        fail(f"--archive {text}: the file exists; give a new file name (an archive is never "
             "overwritten)")
    partial = path.with_name(path.name + ".partial")
    try:
        with open(partial, "wb"):
            pass
        partial.unlink()
    except OSError as e:
        fail(f"--archive {text}: cannot write there ({e.strerror}); give a writable path")
    return path


@click.command("prune")
@click.option("--finished-before", "before", required=True, metavar="DATE|DURATION",
              help="Runs that finished before then: 2026-01-31, 2026-01-31T12:00:00Z or 90d.")
@click.option("--workflow", help="Only the runs of this workflow (its name).")
@click.option("--status", "status_names", default=",".join(s.value for s in TERMINAL_ORDER),
              show_default=True, metavar="STATUS[,STATUS]",
              help="Only runs that ended in these statuses (finished ones only).")
@click.option("--archive", "archive_path", metavar="FILE.jsonl.gz",
              help="First write the runs here (export format, hash chains included) and "
                   "verify it; nothing is deleted unless it verifies.")
@click.option("--dry-run", is_flag=True, help="Only list what would be pruned.")
@click.option("--batch-runs", default=100, show_default=True, type=click.IntRange(1),
              help="At most this many runs per transaction.")
@click.option("--batch-events", default=20_000, show_default=True, type=click.IntRange(1),
              help="About this many events per transaction (a bigger run goes alone).")
@store_options
def prune_cmd(before: str, workflow: str | None, status_names: str, archive_path: str | None,
              dry_run: bool, batch_runs: int, batch_events: int, database_url: str | None,
              as_json: bool) -> None:
    """Remove whole finished runs (events, snapshots, view and queue rows), optionally
    archiving them first."""
    known = {s.value: s for s in RunStatus}
    names = [n.strip() for n in status_names.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        fail(f"--status: unknown status {', '.join(unknown) or '(none given)'}; known "
             f"statuses: {', '.join(known)}")
    try:
        cutoff = parse_past(before, now=datetime.now(UTC), option="--finished-before")
        policy = Policy(cutoff, workflow, frozenset(known[n] for n in names))
    except ValueError as e:
        fail(str(e))
    archive = _archive_path(archive_path) if archive_path and not dry_run else None
    with (
        open_engine(database_url, create=False) as engine,
        tqdm(unit="run", desc="prune", file=sys.stderr, disable=None, leave=False) as bar,
    ):

        def advance(runs: int) -> None:
            bar.update(runs)

        try:
            report = prune(engine, policy, archive=archive, dry_run=dry_run,
                           max_runs=batch_runs, max_events=batch_events, progress=advance)
        except (ArchiveError, RebuildInProgressError) as e:
            fail(str(e))
    _report(report, dry_run, archive, as_json)


def _report(report: PruneReport, dry_run: bool, archive: Path | None, as_json: bool) -> None:
    if as_json:
        output.emit_json({
            "dry_run": dry_run, "chosen": [str(c.run_id) for c in report.chosen],
            "removed_runs": report.removed_runs, "removed_events": report.removed_events,
            "kept": [str(r) for r in report.kept], "archive": str(archive) if archive else None,
            "archive_events": report.archive_events, "archive_bytes": report.archive_bytes,
        })
        return
    if dry_run:
        for c in report.chosen:
            click.echo(f"{c.run_id}  {c.workflow:20} {c.status.value:10} {c.version:>9} events"
                       f"  finished {c.finished_at:%Y-%m-%d %H:%M:%S}")
        click.echo(f"would prune {len(report.chosen)} runs "
                   f"({sum(c.version for c in report.chosen)} events)", err=True)
        return
    if archive is not None and report.archive_events:
        click.echo(f"archived {report.archive_events} events of {len(report.chosen)} runs to "
                   f"{archive} ({report.archive_bytes} bytes); it verifies", err=True)
    click.echo(f"pruned {report.removed_runs} runs ({report.removed_events} events)", err=True)
    for run_id in report.kept:
        click.echo(f"kept run {run_id} (it changed, or holds the newest position of a SQLite "
                   "log: prune it later)", err=True)


@click.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@store_options
def import_cmd(path: str, database_url: str | None, as_json: bool) -> None:
    """Restore the runs of an archive (or export) into a store; they replay and verify.

    The archive is verified first; runs already in the store with the same history are
    skipped, so running it again after an interruption finishes the job.
    """
    if not os.access(path, os.R_OK):
        fail(f"cannot read {path}")
    with open_engine(database_url) as engine:
        try:
            imported, present = import_archive(engine.store, path)
        except ArchiveError as e:
            fail(str(e))
    if as_json:
        output.emit_json({"imported": [str(r) for r in imported],
                          "present": [str(r) for r in present]})
        return
    click.echo(f"imported {len(imported)} runs from {path}"
               + (f"; {len(present)} were there already" if present else ""), err=True)


def verify_archive_cmd(path: str, as_json: bool) -> None:
    """`stepstone verify --archive FILE`: exit 0 if every run verifies, 1 if one does not."""
    try:
        report = verify_archive(path)
    except ArchiveError as e:
        fail(str(e), EXIT_FAILED)
    if as_json:
        for head in report.runs.values():
            output.emit_json({"run_id": head.run_id, "version": head.version,
                              "hash": head.hash})
    if report.ok:
        click.echo(f"verified archive {path}: {report.events} events of {len(report.runs)} "
                   "runs, every run whole and its hash chain intact", err=True)
        return
    click.echo(f"TAMPERED: archive {path}: first bad event at {report.problems[0]}", err=True)
    for p in report.problems[1:]:
        click.echo(f"also: {p}", err=True)
    sys.exit(EXIT_FAILED)
