"""`stepstone chaos`: prove a workflow survives kills before trusting it (see `chaos.py`)."""

from __future__ import annotations

import os
import random
import sys
import tempfile
from pathlib import Path

import click
import orjson

from engine import EngineError, load_workflow
from stepstone import output
from stepstone.chaos import ChaosError, ChaosReport, run_chaos
from stepstone.common import EXIT_FAILED, fail


@click.command()
@click.argument("reference", metavar="MODULE:WORKFLOW")
@click.option("--input", "input_json", default="{}", metavar="JSON",
              help="The workflow's parameters as a JSON object.")
@click.option("--kills", default=3, show_default=True, type=click.IntRange(0),
              help="How many times to interrupt the run.")
@click.option("--seed", type=int, help="Seed of the kill plan (default: a random one, printed "
              "so that the same plan can be run again).")
@click.option("--db", "database_url", metavar="URL",
              help="Store for the interrupted run, e.g. a PostgreSQL schema (default: a fresh "
              "temporary SQLite store). The reference run always gets a fresh SQLite store.")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path),
              help="Keep the stores, the run processes' output and their working directories "
              "here (default: a temporary directory, deleted afterwards).")
@click.option("--timeout", "timeout_s", default=600.0, show_default=True,
              type=click.FloatRange(min=1), help="Longest one run process may take, in seconds.")
@click.option("--output-varies", is_flag=True,
              help="The workflow's output differs from run to run by design (a step returns "
              "a random id or a time): check it against the run's own recorded steps instead "
              "of an uninterrupted run's output. Detected by itself when two uninterrupted "
              "runs differ.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def chaos(reference: str, input_json: str, kills: int, seed: int | None,
          database_url: str | None, workdir: Path | None, timeout_s: float,
          output_varies: bool, as_json: bool) -> None:
    """Interrupt a run of MODULE:WORKFLOW KILLS times (SIGKILL and SIGTERM), resume it each
    time, and compare its output with an uninterrupted run's; exit 1 if they differ.

    An output that varies between uninterrupted runs too is not compared: the run's output
    is checked against what its own recorded step outputs give.

    Each run works in an empty working directory of its own, so relative paths in the
    workflow's side effects do not collide between the two runs.
    """
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    from stepstone.cli import parse_input  # late: cli.py imports this module

    try:
        wf = load_workflow(reference)
        data = parse_input(input_json)
        wf.normalize_input(data)
    except EngineError as e:
        fail(str(e))
    seed = seed if seed is not None else random.SystemRandom().randrange(2**31)
    with tempfile.TemporaryDirectory(prefix="stepstone-chaos-") as tmp:
        base = (workdir or Path(tmp)).resolve()
        base.mkdir(parents=True, exist_ok=True)
        try:
            report = run_chaos(reference, wf.name, data, input_json, kills=kills, seed=seed,
                               base=base, database_url=database_url, timeout_s=timeout_s,
                               output_varies=output_varies)
        except (ChaosError, EngineError) as e:
            fail(f"the chaos check could not finish: {e}", EXIT_FAILED)
    if as_json:
        output.emit_json(report.to_dict())
    else:
        show(report)
    if not report.matched:
        sys.exit(EXIT_FAILED)


def show(report: ChaosReport) -> None:
    click.echo(f"chaos check of {report.workflow} (seed {report.seed}, "
               f"{len(report.plan)} kills planned, run {report.run_id})")
    click.echo(f"uninterrupted run: completed, {report.reference_duration_s:.3f}s of work")
    for k in report.kills:
        head = f"kill {k.number}: {k.signal} after {k.delay_s:.3f}s"
        if not k.landed:
            click.echo(f"{head}: {k.note}")
            continue
        what = "killed" if k.signal == "SIGKILL" else "preempted"
        where = f" in step {k.step}" if k.step else " between steps"
        resumed = f"; resumed in {k.resume_s:.3f}s" if k.resume_s is not None else ""
        click.echo(f"{head}: {what}{where}{resumed}")
    click.echo(f"kills that landed: {report.landed} of {len(report.plan)}")
    if report.repeated_steps:
        steps = ", ".join(f"{key} x{n}" for key, n in report.repeated_steps.items())
        click.echo(f"steps started more than once (the at-least-once window): {steps}")
    else:
        click.echo("no step started more than once")
    _verdict(report)


def _verdict(report: ChaosReport) -> None:
    """The outcome, and advice that matches its cause."""
    if report.status != "completed":
        click.echo(f"output: none, the run ended {report.status} (the uninterrupted run "
                   "completed)")
        click.echo("A kill should only delay a run: read why it stopped with `stepstone "
                   f"history {report.run_id} --db {report.store}`.")
        return
    if report.output_varies:
        click.echo("output: varies by design (two uninterrupted runs differ too, e.g. a step "
                   "returns uuid4()); not compared")
        if report.replayed:
            click.echo("output: is what the run's own recorded step outputs give (replayed); "
                       "check side effects with engine.testing.IdempotencyLedger")
            return
        click.echo(f"output: DIFFERS from what its recorded step outputs give: "
                   f"{report.replay_problem}")
        click.echo("The workflow body is not deterministic between steps: move randomness, "
                   "time and I/O into steps (see docs/getting-started.md).")
        return
    if report.matched:
        click.echo("output: matches the uninterrupted run")
        return
    click.echo(f"output: DIFFERS from the uninterrupted run (run {report.status})")
    click.echo("  expected: " + orjson.dumps(report.reference_output).decode())
    click.echo("  got:      " + orjson.dumps(report.output).decode())
    click.echo("A second uninterrupted run gave the same output as the first, so the "
               "difference comes from the kills: a step's side effect was probably applied "
               "again. Key it on step_context().operation_id (see docs/operations.md).")
