"""How the CLI prints: plain lines for people, one JSON document for scripts."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import click
import orjson

from engine import RunInfo, RunResult


def emit_json(data: Any) -> None:
    click.echo(orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS).decode())


def result_dict(result: RunResult) -> dict[str, Any]:
    return asdict(result)


def info_dict(info: RunInfo) -> dict[str, Any]:
    return asdict(info)


def show_result(result: RunResult) -> None:
    click.echo(f"run {result.run_id} {result.status.value}")
    if result.error_type:
        click.echo(f"error: {result.error_type}: {result.error_message}")
    if result.output is not None:
        click.echo("output: " + orjson.dumps(result.output).decode())


def cut(text: str, width: int) -> str:
    """`text` in at most `width` characters, with an ellipsis when something was cut off."""
    return text if len(text) <= width else text[: width - 1] + "\u2026"


def shown(value: object) -> str:
    """A field's value for people: `-` for nothing, never Python's `None`."""
    return "-" if value is None or value == "" else str(value)


def show_runs(infos: list[RunInfo]) -> None:
    if not infos:
        click.echo("no runs yet")
        return
    click.echo(f"{'RUN ID':36}  {'WORKFLOW':20} {'STATUS':11} {'STEPS':>7}  {'STARTED (UTC)':19}")
    for i in infos:
        click.echo(
            f"{i.run_id!s:36}  {cut(i.workflow, 20):20} {i.status.value:11} "
            f"{i.steps_completed:>7}  {i.started_at:%Y-%m-%d %H:%M:%S}"
        )
