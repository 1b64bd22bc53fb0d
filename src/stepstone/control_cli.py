"""`stepstone cancel`: stop a run for good, wherever it is driven (docs/controlling-runs.md)."""

from __future__ import annotations

from uuid import UUID

import click

from engine import Engine, RunNotFoundError, RunStatus, load_workflow, run_id_for_key
from stepstone import output
from stepstone.common import fail, open_engine, parse_run_id, store_options


@click.command()
@click.argument("run_id", required=False)
@click.option("--key", help="Find the run by its idempotency key (with --workflow).")
@click.option("--workflow", "workflow_name", metavar="NAME|MODULE:WORKFLOW",
              help="The workflow whose run --key names.")
@click.option("--reason", default="cancelled from the command line", show_default=True,
              help="Why; recorded in the run's RunCancelled event with who and when.")
@click.option("--wait", "wait_s", default=10.0, show_default=True, type=click.FloatRange(0),
              help="Seconds to wait for a run's live holder to stop it (0: do not wait).")
@click.option("--keep-children", is_flag=True,
              help="Leave the run's unfinished child runs going (by default they are cancelled).")
@store_options
def cancel(run_id: str | None, key: str | None, workflow_name: str | None, reason: str,
           wait_s: float, keep_children: bool, database_url: str | None,
           as_json: bool) -> None:
    """Cancel a run: at once if nobody drives it, else at its next checkpoint or step boundary.

    The request is recorded first, so a holder on another machine (or whoever takes the run
    over) honours it even if this command is interrupted. A finished run is an error (exit 2,
    nothing written); `stepstone resume --force RUN_ID` reopens a cancelled one.
    """
    if not reason.strip():
        fail("--reason must say why (it is recorded in the run's history)")
    with open_engine(database_url, create=False) as engine:
        rid = _target(engine, run_id, key, workflow_name)
        outcome = engine.cancel(rid, reason=reason, wait_s=wait_s, children=not keep_children)
        if as_json:
            output.emit_json({"run_id": str(rid), "status": outcome.status.value,
                              "held_by": outcome.holder, "by": outcome.request.by,
                              "reason": outcome.request.reason,
                              "requested_at": outcome.request.requested_at.isoformat()})
            return
        if outcome.status is RunStatus.CANCELLED:
            click.echo(f"run {rid} cancelled")
        elif outcome.status.is_terminal:
            click.echo(f"run {rid} ended {outcome.status.value} before the cancel took effect")
        else:
            click.echo(
                f"cancel requested: {outcome.holder} is driving run {rid} and stops it at its "
                f"next checkpoint or step boundary; `stepstone status {rid}` shows when"
            )


def _target(engine: Engine, run_id: str | None, key: str | None,
            workflow_name: str | None) -> UUID:
    """The run named by its id, or by `--key` and `--workflow`: exactly one of the two."""
    if run_id is not None:
        if key is not None or workflow_name is not None:
            fail("give a RUN_ID, or --key with --workflow, not both")
        return parse_run_id(run_id)
    if key is None or workflow_name is None:
        fail("name the run: stepstone cancel RUN_ID, or --key KEY --workflow NAME")
    name = load_workflow(workflow_name).name if ":" in workflow_name else workflow_name
    rid = run_id_for_key(name, key)
    try:
        engine.store.load(rid)
    except RunNotFoundError:
        fail(f"no run of workflow {name!r} has the key {key!r} (`stepstone runs` lists runs)")
    return rid
