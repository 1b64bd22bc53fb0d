"""`stepstone`: run, resume and inspect durable workflows from a shell.

Exit codes: 0 done, 1 the run failed, 2 bad input or usage (nothing written), 3 the run is
parked (its code no longer replays its history), 4 the run was cancelled or passed its
deadline (timed out), 75 interrupted with progress saved
(EX_TEMPFAIL: a preemption, a store fault, a lost lease or a write conflict; run the same
command again to resume), 130 forced exit.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any
from uuid import UUID

import click
import orjson

from engine import (
    STOPPED,
    Engine,
    EngineError,
    LeaseLostError,
    RunConflictError,
    RunParkedError,
    RunResult,
    RunStatus,
    StoreUnavailableError,
    Workflow,
    load_workflow,
    signals_request_preemption,
)
from stepstone import output
from stepstone.common import (
    EXIT_FAILED,
    EXIT_FORCED,
    EXIT_PARKED,
    EXIT_PREEMPTED,
    EXIT_STOPPED,
    basic_logging,
    fail,
    log_format_option,
    open_engine,
    parse_duration,
    parse_run_id,
    setup_logging,
    store_options,
)
from stepstone.lazy import LazyGroup


@contextmanager
def store_faults_exit(resume_hint: str) -> Iterator[None]:
    """A store fault, a lost lease or a write conflict while running: exit 75, naming it.

    Whatever was saved before stays in the log, and the same command resumes from there.
    """
    try:
        yield
    except (StoreUnavailableError, LeaseLostError, RunConflictError) as e:
        fail(f"{e}\nprogress saved; run the same command again: {resume_hint}", EXIT_PREEMPTED)


def drive(engine: Engine, action: Callable[[], RunResult], resume_hint: str, as_json: bool) -> None:
    """Run `action` with Ctrl-C/SIGTERM routed to the preemption token, then report and exit."""

    def notice(signame: str) -> None:
        click.echo(
            f"\n{signame}: finishing the current unit and saving progress "
            "(press Ctrl-C again to force exit)...",
            err=True,
        )

    try:
        with store_faults_exit(resume_hint), signals_request_preemption(
            engine.token, on_first=notice
        ):
            result = action()
    except RunParkedError as e:
        fail(str(e), EXIT_PARKED)
    except KeyboardInterrupt:
        click.echo(
            "forced exit: every recorded event is safe; the unit in flight will run again. "
            f"Resume with: {resume_hint}",
            err=True,
        )
        sys.exit(EXIT_FORCED)
    if as_json:
        output.emit_json(output.result_dict(result))
    else:
        output.show_result(result)
    if result.status is RunStatus.PREEMPTED:
        info = engine.status(result.run_id)
        where = f" at step {info.current_step}" if info.current_step else ""
        click.echo(
            f"interrupted{where}; progress is saved ({info.steps_completed} steps done). "
            f"Resume with: {resume_hint}",
            err=True,
        )
        sys.exit(EXIT_PREEMPTED)
    if result.status is RunStatus.FAILED:
        sys.exit(EXIT_FAILED)
    if result.status in STOPPED:
        info = engine.status(result.run_id)
        click.echo(f"run {result.run_id} {info.status.value}: {info.reason}", err=True)
        sys.exit(EXIT_STOPPED)


# Imported when run, not at start (`stepstone.lazy`): name -> "module:command".
_SUBCOMMANDS = {
    "runs": "stepstone.history_cli:runs",
    "history": "stepstone.history_cli:history",
    "cancel": "stepstone.control_cli:cancel",
    "send": "stepstone.messages_cli:send",
    "schedules": "stepstone.schedules_cli:schedules",
    "projections": "stepstone.projections_cli:projections",
    "worker": "stepstone.worker_cli:worker",
    "serve": "stepstone.serve_cli:serve",
    # Audit and replay (docs/audit.md).
    "export": "stepstone.audit_cli:export",
    "replay": "stepstone.audit_cli:replay",
    "fork": "stepstone.audit_cli:fork",
    "verify": "stepstone.audit_cli:verify",
    "chaos": "stepstone.chaos_cli:chaos",
    # Retention (docs/operations.md).
    "prune": "stepstone.retention_cli:prune_cmd",
    "import": "stepstone.retention_cli:import_cmd",
}


@click.group(cls=LazyGroup, lazy_subcommands=_SUBCOMMANDS,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="stepstone", message="stepstone %(version)s")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """Stepstone: durable workflows that survive interruption."""
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    basic_logging(level)


@main.command()
@click.option("--records", default=500_000, show_default=True, type=click.IntRange(1))
@click.option("--chunk", default=1_000, show_default=True, type=click.IntRange(1))
@click.option("--seed", default=7, show_default=True)
@click.option("--workdir", default="stepstone-demo", show_default=True,
              help="Where the generated data set and the output table go.")
@store_options
@log_format_option
def demo(records: int, chunk: int, seed: int, workdir: str, database_url: str | None,
         as_json: bool, log_format: str) -> None:
    """Run the demo batch job; interrupt it anytime and run it again to resume."""
    setup_logging(log_format)
    from stepstone.demo import batch_job

    params = {"records": records, "chunk": chunk, "seed": seed, "workdir": workdir}
    key = "demo:" + orjson.dumps(params, option=orjson.OPT_SORT_KEYS).decode()
    with open_engine(database_url) as engine, store_faults_exit("stepstone demo"):
        run_id = engine.start(batch_job, params, key=key)
        prior = engine.status(run_id).status
        if prior.is_terminal and not as_json:
            click.echo(f"run {run_id} already {prior.value}; --seed or --workdir start another",
                       err=True)
        elif prior is not RunStatus.PENDING and not as_json:
            click.echo(f"resuming run {run_id} ({prior.value})", err=True)
        drive(engine, lambda: engine.resume(run_id), "stepstone demo (the same options)",
              as_json)
        if not as_json:
            digest = engine.result(run_id)["digest"]
            click.echo(f"result digest: {digest}")


@main.command("run")
@click.argument("reference", metavar="MODULE:WORKFLOW")
@click.option("--input", "input_json", default="{}", metavar="JSON",
              help="The workflow's parameters as a JSON object.")
@click.option("--key", help="Idempotency key: the same key always means the same run.")
@click.option("--enqueue", is_flag=True,
              help="Only record the run and print its id; a `stepstone worker` drives it.")
@click.option("--timeout", "timeout_text", metavar="DURATION",
              help="Stop the run this long after it starts (90s, 15m, 2h, 1h30m, 7d); it then "
              "ends timed_out. Default: the workflow's own timeout, if any.")
@store_options
@log_format_option
def run_cmd(reference: str, input_json: str, key: str | None, enqueue: bool,
            timeout_text: str | None, database_url: str | None, as_json: bool,
            log_format: str) -> None:
    """Run a workflow; an unfinished run with the same input is resumed instead."""
    setup_logging(log_format)
    timeout = parse_duration(timeout_text, "--timeout") if timeout_text is not None else None
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        wf = load_workflow(reference)
        data = parse_input(input_json)
        wf.normalize_input(data)
    except EngineError as e:
        fail(str(e))
    quoted = input_json.replace("'", "'\\''")
    hint = f"stepstone run {reference} --input '{quoted}'" + (f" --key {key}" if key else "")
    with open_engine(database_url) as engine, store_faults_exit(hint):
        run_id = key_or_unfinished(engine, wf, data, key, timeout)
        if enqueue:
            if as_json:
                output.emit_json({"run_id": str(run_id), "queue": wf.queue})
            else:
                click.echo(run_id)
                click.echo(f"queued on {wf.queue!r}; follow it with: stepstone status {run_id}",
                           err=True)
            return
        drive(engine, lambda: engine.resume(run_id), f"{hint}  (or: stepstone resume {run_id})",
              as_json)


def parse_input(text: str) -> dict[str, Any]:
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as e:
        fail(f"--input is not valid JSON: {e}")
    if not isinstance(data, dict):
        fail(f"--input must be a JSON object of parameter names to values, not {text!r}")
    return data


def key_or_unfinished(engine: Engine, wf: Workflow[..., Any], data: dict[str, Any],
                      key: str | None, timeout: timedelta | None = None) -> UUID:
    if key is None:
        unfinished = engine.unfinished_runs(wf, data)
        if unfinished:
            click.echo(f"resuming unfinished run {unfinished[-1]}", err=True)
            if timeout is not None:
                click.echo("--timeout applies to new runs; this one keeps the deadline it "
                           "started with", err=True)
            return unfinished[-1]
    return engine.start(wf, data, key=key, deadline=timeout)


@main.command()
@click.argument("run_id")
@click.option("--workflow", "reference", metavar="MODULE:WORKFLOW",
              help="Where the workflow code is, if not where the run recorded it.")
@click.option("--force", is_flag=True,
              help="Reopen a cancelled or timed-out run (recorded as a forced resume; its "
              "deadline is lifted) and drive it on from its log.")
@store_options
@log_format_option
def resume(run_id: str, reference: str | None, force: bool, database_url: str | None,
           as_json: bool, log_format: str) -> None:
    """Resume a run from where its log says it stopped."""
    setup_logging(log_format)
    rid = parse_run_id(run_id)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    hint = f"stepstone resume {rid}"
    with open_engine(database_url, create=False) as engine, store_faults_exit(hint):
        if reference:
            engine.register(load_workflow(reference))
        info = engine.status(rid)
        if info.status in STOPPED and not force:
            fail(f"run {rid} is {info.status.value} ({info.reason}); nothing was written. "
                 f"To drive it on from its log anyway: stepstone resume --force {rid}")
        drive(engine, lambda: engine.resume(rid, force=force), hint, as_json)


@main.command()
@click.argument("run_id")
@store_options
def status(run_id: str, database_url: str | None, as_json: bool) -> None:
    """Show one run's state as the engine's replay sees it."""
    rid = parse_run_id(run_id)
    with open_engine(database_url, create=False) as engine:
        info = engine.status(rid)
        fields = output.info_dict(info)
        fields["events"], fields["log_bytes"] = engine.store.reader.size_of(rid)
        place = engine.placement(rid)
        if place is not None:  # who should drive it next (the index beside the log)
            fields["queue"] = place.queue
            fields["queue_state"] = place.state
            fields["held_by"] = place.held_by
            fields["queue_note"] = place.note
        if as_json:
            output.emit_json(fields)
        else:
            for name, value in fields.items():
                click.echo(f"{name:17} {output.shown(value)}")
