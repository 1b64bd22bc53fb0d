"""Audit and replay commands: export, replay (time travel, deploy-safety check), fork, verify.

Exit codes as for every command (stepstone.cli); `replay --check` and `verify` exit 1 when
they find a run that would diverge or a log that was tampered with, so CI can gate on them.
"""

from __future__ import annotations

import importlib
import os
import sys
from datetime import datetime
from typing import Any
from uuid import UUID

import click
import orjson
from tqdm import tqdm

from engine import Engine, EngineError, Workflow, load_workflow
from engine.audit.export import has_events, write_export
from engine.audit.fork import fork_run
from engine.audit.replay_check import CheckResult, check_run
from engine.audit.time_travel import describe, state_at, version_at
from engine.audit.verify import Snapshots, read_anchors
from engine.audit.verify import verify as verify_log
from engine.errors import RunNotFoundError, WorkflowNotFoundError
from stepstone import output
from stepstone.common import EXIT_FAILED, fail, open_engine, parse_run_id, store_options


def _cwd_importable() -> None:
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


@click.command()
@click.option("--workflow", help="Only the runs of this workflow (its name).")
@click.option("--run", "run_id", metavar="RUN_ID", help="Only this run.")
@click.option("-o", "--output", "path", type=click.Path(dir_okay=False, writable=True),
              help="Write to this file instead of standard output.")
@store_options
def export(workflow: str | None, run_id: str | None, path: str | None,
           database_url: str | None, as_json: bool) -> None:
    """Write the log (or one workflow's or one run's events) as JSON Lines (docs/audit.md)."""
    if workflow and run_id:
        fail("give --workflow or --run, not both")
    rid = parse_run_id(run_id) if run_id else None
    with open_engine(database_url, create=False) as engine:
        if not has_events(engine.store, run_id=rid, workflow=workflow):
            raise RunNotFoundError(rid) if rid else WorkflowNotFoundError(
                f"no runs of workflow {workflow!r} in this store; `stepstone runs` lists them")
        if path is None:
            count = write_export(engine.store, sys.stdout.buffer, run_id=rid, workflow=workflow)
            sys.stdout.buffer.flush()
        else:
            with open(path, "wb") as f:
                count = write_export(engine.store, f, run_id=rid, workflow=workflow)
    click.echo(f"exported {count} events", err=True)


@click.command()
@click.argument("run_id", required=False)
@click.option("--at", "at", metavar="VERSION|TIMESTAMP",
              help="Show the run's state right after this version, or at this UTC time.")
@click.option("--check", "reference", metavar="MODULE[:WORKFLOW]",
              help="Deploy-safety check: replay stored histories against this code.")
@click.option("--all", "include_finished", is_flag=True,
              help="With --check: finished runs too, not only unfinished ones.")
@store_options
def replay(run_id: str | None, at: str | None, reference: str | None, include_finished: bool,
           database_url: str | None, as_json: bool) -> None:
    """Time travel (RUN_ID --at ...) or the deploy-safety check (--check MODULE[:WORKFLOW]).

    Nothing is executed and nothing is written either way.
    """
    if reference:
        _check(reference, run_id, include_finished, database_url, as_json)
        return
    if not run_id or not at:
        fail("give RUN_ID --at VERSION|TIMESTAMP, or --check MODULE[:WORKFLOW]")
    rid = parse_run_id(run_id)
    with open_engine(database_url, create=False) as engine:
        version = int(at) if at.isdigit() else version_at(engine.store, rid, _parse_time(at))
        snap = describe(state_at(engine.store, rid, version=version))
    data = snap.__dict__
    if as_json:
        output.emit_json(data)
        return
    for name, value in data.items():
        plain = isinstance(value, str | int | UUID | datetime)
        shown = value if plain else orjson.dumps(value).decode()
        click.echo(f"{name:16} {shown}")


def _parse_time(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        fail(f"--at {text!r} is neither a version number nor an ISO 8601 time "
             "(e.g. 2026-01-31T12:00:00Z)")
    if moment.tzinfo is None:
        fail(f"--at {text!r} has no time zone; add Z for UTC, e.g. {text}Z")
    return moment


def _workflows_of(reference: str) -> list[Workflow[..., Any]]:
    _cwd_importable()
    if ":" in reference:
        return [load_workflow(reference)]
    try:
        module = importlib.import_module(reference)
    except ImportError as e:
        fail(f"cannot import module {reference!r}: {e}")
    found = [v for v in vars(module).values() if isinstance(v, Workflow)]
    if not found:
        fail(f"module {reference!r} defines no @workflow; give MODULE:WORKFLOW")
    return found


def _check(reference: str, run_id: str | None, include_finished: bool,
           database_url: str | None, as_json: bool) -> None:
    try:
        workflows = {wf.name: wf for wf in _workflows_of(reference)}
    except EngineError as e:
        fail(str(e))
    only = parse_run_id(run_id) if run_id else None
    results: list[CheckResult] = []
    with open_engine(database_url, create=False) as engine:
        for started in engine.store.started():
            rid = started.originator_id
            if started.workflow not in workflows or (only and rid != only):
                continue
            run = engine.store.load(rid)
            if run.status.is_terminal and not include_finished and only is None:
                continue
            results.append(check_run(run, workflows[started.workflow]))
    bad = [r for r in results if not r.ok]
    for r in results:
        if as_json:
            output.emit_json({**r.__dict__, "ok": r.ok, "message": r.message})
        else:
            verdict = "ok  " if r.ok else "FAIL"
            click.echo(f"{verdict} {r.run_id} {r.workflow} ({r.status.value}): {r.message}")
    if not as_json:
        which = "runs" if include_finished else "unfinished runs"
        click.echo(f"{len(results)} {which} of {', '.join(sorted(workflows))} checked; "
                   f"{len(bad)} would not resume cleanly", err=True)
    if bad:
        sys.exit(EXIT_FAILED)


@click.command()
@click.argument("run_id")
@click.option("--from", "from_step", required=True, metavar="STEP",
              help="The step to run again (a key like charge#0, or a step name).")
@click.option("--workflow", "reference", metavar="MODULE:WORKFLOW",
              help="Where the workflow code is, if not where the parent run recorded it.")
@click.option("--no-run", is_flag=True, help="Record the fork, do not drive it.")
@store_options
def fork(run_id: str, from_step: str, reference: str | None, no_run: bool,
         database_url: str | None, as_json: bool) -> None:
    """Start a new run reusing RUN_ID's outputs before STEP, running STEP on with current code."""
    from stepstone.cli import drive  # the CLI's own run driving (signals, exit codes)

    parent = parse_run_id(run_id)
    _cwd_importable()
    with open_engine(database_url, create=False) as engine:
        if reference:
            engine.register(load_workflow(reference))
        new_id = fork_run(engine, parent, from_step)
        click.echo(f"forked run {new_id} from run {parent} at step {from_step}", err=True)
        if no_run:
            if as_json:
                output.emit_json({"run_id": new_id, "parent_run_id": parent})
            return
        _drive(engine, new_id, as_json, drive)


def _drive(engine: Engine, run_id: UUID, as_json: bool, drive: Any) -> None:
    drive(engine, lambda: engine.resume(run_id), f"stepstone resume {run_id}", as_json)


@click.command()
@click.argument("run_id", required=False)
@click.option("--anchors", type=click.Path(exists=True, dir_okay=False),
              help="Heads saved earlier (the JSON Lines of `verify --json`): checks that no "
                   "chain was rewritten or cut short since.")
@click.option("--snapshots", type=click.Choice(["latest", "all", "none"]), default="latest",
              show_default=True,
              help="Snapshots to check against their run's events: each run's latest (the one "
                   "loads trust), all (older ones serve time travel), or none (chains only, "
                   "fastest: checking a snapshot costs a replay of its run).")
@click.option("--archive", type=click.Path(exists=True, dir_okay=False),
              help="Check an archive (from `prune --archive`, or an export) on its own: "
                   "every run whole and its chain intact. No store is opened.")
@store_options
def verify(run_id: str | None, anchors: str | None, snapshots: Snapshots, archive: str | None,
           database_url: str | None, as_json: bool) -> None:
    """Check the hash chains of one run, or of the whole log, and its snapshots; name the
    first bad event."""
    if archive is not None:
        from stepstone.retention_cli import verify_archive_cmd

        verify_archive_cmd(archive, as_json)
        return
    rid = parse_run_id(run_id) if run_id else None
    anchor_map = None
    if anchors:
        with open(anchors, "rb") as f:
            try:
                anchor_map = read_anchors(orjson.loads(line) for line in f if line.strip())
            except (orjson.JSONDecodeError, ValueError, KeyError) as e:
                fail(f"{anchors} is not a file of heads from `stepstone verify --json`: {e}")
        if not anchor_map:
            fail(f"{anchors} holds no heads to check against")
    with open_engine(database_url, create=False) as engine:
        if rid is not None and not has_events(engine.store, run_id=rid):
            raise RunNotFoundError(rid)
        total = None if rid else engine.store.head()
        with tqdm(total=total, unit="ev", desc="verify", file=sys.stderr, disable=None,
                  leave=False) as bar:

            def advance(n: int) -> None:
                bar.update(n)

            report = verify_log(engine.store, rid, anchors=anchor_map, progress=advance,
                                snapshots=snapshots)
    if as_json:
        for head in report.heads:
            output.emit_json({"run_id": head.run_id, "version": head.version, "hash": head.hash})
    for run in report.unchained:
        click.echo(f"warning: run {run} was written before hash chains; it cannot be verified",
                   err=True)
    first = report.first
    if first is None:
        checked = {"latest": " and the latest snapshots match their events",
                   "all": " and every snapshot matches its events", "none": ""}[snapshots]
        click.echo(f"verified {report.events} events of {len(report.heads)} runs: the hash "
                   f"chains are intact{checked}", err=True)
        return
    click.echo(f"TAMPERED: first bad event at {first}", err=True)
    for p in sorted(report.problems, key=lambda p: p.position):
        if p is not first:
            click.echo(f"also: {p}", err=True)
    sys.exit(EXIT_FAILED)
