"""`stepstone schedules`: list, add, pause and resume the cron schedules workers fire.

Workers start the runs (`engine.schedules`); these commands only change the table beside the
log. Bad input (an unparsable cron, an unknown time zone, input that is not JSON or does not
fit the workflow) is one line and exit 2, with nothing written.
"""

from __future__ import annotations

import click
import orjson

from engine import EngineError, load_workflow
from engine.schedules import MISSED_POLICIES, Schedule, check_cron, list_schedules, set_paused
from stepstone import output
from stepstone.common import fail, open_engine, store_options


@click.group()
def schedules() -> None:
    """Cron schedules: each tick starts one run of its workflow, whatever the worker count."""


def _row(s: Schedule) -> dict[str, object]:
    return {"name": s.name, "workflow": s.workflow, "cron": s.cron, "timezone": s.timezone,
            "missed": s.missed, "paused": s.paused, "input": s.input,
            "last_tick": s.last_tick.isoformat(), "next_tick": s.next_tick().isoformat()}


@schedules.command("list")
@store_options
def list_cmd(database_url: str | None, as_json: bool) -> None:
    """Every schedule with its next tick."""
    with open_engine(database_url, create=False) as engine:
        rows = [_row(s) for s in list_schedules(engine)]
    if as_json:
        output.emit_json(rows)
        return
    if not rows:
        click.echo("no schedules (add one with `stepstone schedules add` or engine.schedule)")
    for r in rows:
        state = "paused" if r["paused"] else f"next {r['next_tick']}"
        click.echo(f"{r['name']:20} {r['cron']:15} {r['timezone']:12} {r['missed']:7} "
                   f"{r['workflow']}  {state}")


@schedules.command()
@click.argument("name")
@click.argument("workflow_ref", metavar="MODULE:WORKFLOW")
@click.option("--cron", required=True, help="Five cron fields, e.g. '0 2 * * *'.")
@click.option("--tz", "timezone", default="UTC", show_default=True, help="An IANA time zone.")
@click.option("--input", "input_json", default="{}", show_default=True, metavar="JSON")
@click.option("--missed", type=click.Choice(MISSED_POLICIES), default="latest",
              show_default=True, help="What to do with ticks missed while no worker ran.")
@store_options
def add(name: str, workflow_ref: str, cron: str, timezone: str, input_json: str, missed: str,
        database_url: str | None, as_json: bool) -> None:
    """Create or change a schedule (a change keeps its paused state)."""
    try:
        data = orjson.loads(input_json)
    except orjson.JSONDecodeError as e:
        fail(f"--input is not JSON ({e})")
    if not isinstance(data, dict):
        fail("--input must be a JSON object of the workflow's parameters")
    try:  # everything checked before the store is opened: bad input writes nothing
        check_cron(cron, timezone)
        wf = load_workflow(workflow_ref)
        wf.normalize_input(data)
    except EngineError as e:
        fail(str(e))
    with open_engine(database_url) as engine:
        s = engine.schedule(wf, cron, data, name=name, timezone=timezone, missed=missed)
    if as_json:
        output.emit_json(_row(s))
    else:
        click.echo(f"schedule {s.name}: {s.workflow} at '{s.cron}' ({s.timezone}); "
                   f"next tick {s.next_tick().isoformat()}")


@schedules.command()
@click.argument("name")
@store_options
def pause(name: str, database_url: str | None, as_json: bool) -> None:
    """Stop starting runs for a schedule (runs already started go on)."""
    _pause(name, True, database_url, as_json)


@schedules.command()
@click.argument("name")
@store_options
def resume(name: str, database_url: str | None, as_json: bool) -> None:
    """Start runs again from the next tick (ticks missed while paused are not started)."""
    _pause(name, False, database_url, as_json)


def _pause(name: str, paused: bool, database_url: str | None, as_json: bool) -> None:
    with open_engine(database_url, create=False) as engine:
        s = set_paused(engine, name, paused)
    if as_json:
        output.emit_json(_row(s))
    else:
        click.echo(f"schedule {s.name} {'paused' if paused else 'resumed'}"
                   + ("" if paused else f"; next tick {s.next_tick().isoformat()}"))
