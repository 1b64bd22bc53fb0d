"""What every command shares: store options, opening the engine, one-line errors."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, NoReturn, TypeVar
from uuid import UUID

import click
from pydantic import TypeAdapter, ValidationError

from engine import Engine, EngineError, Settings

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_PARKED = 3
EXIT_STOPPED = 4  # cancelled, or stopped at its deadline
EXIT_PREEMPTED = 75
EXIT_FORCED = 130

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def log_format_option(fn: F) -> F:
    """`--log-format text|json` for the commands that run for a long time."""
    return click.option(
        "--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
        help="json: one JSON object per log record, with run_id, workflow, step_key, attempt, "
        "worker_id and run_version, to join with `stepstone history --json`.",
    )(fn)


def basic_logging(level: int) -> None:
    """Text records on standard error, each naming the run it concerns."""
    from engine.logcontext import text_formatter

    logging.basicConfig(level=level)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(text_formatter())


def setup_logging(log_format: str, *, at_least: int | None = None) -> None:
    """Point the root handler at the chosen format (the group set its level from -v)."""
    from engine.logcontext import json_formatter

    root = logging.getLogger()
    if not root.handlers:
        basic_logging(root.level)
    if at_least is not None and root.level > at_least:
        root.setLevel(at_least)
    if log_format == "json":
        for handler in root.handlers:
            handler.setFormatter(json_formatter())


def store_options(fn: F) -> F:
    fn = click.option(
        "--db", "database_url", metavar="URL",
        help="Event store URL (default: STEPSTONE_DATABASE_URL, else sqlite:///stepstone.db).",
    )(fn)
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(fn)


@contextmanager
def open_engine(database_url: str | None, *, create: bool = True) -> Iterator[Engine]:
    try:
        settings = Settings(database_url=database_url) if database_url else Settings()
        engine = Engine(settings, create=create)
    except EngineError as e:
        fail(str(e))
    except ValidationError as e:
        fail(settings_error(e))
    try:
        yield engine
    except EngineError as e:
        fail(str(e))
    finally:
        engine.close()


def settings_error(error: ValidationError) -> str:
    """A settings error in one line per problem, naming the STEPSTONE_ variable to fix."""
    problems = [
        f"{'STEPSTONE_' + str(e['loc'][0]).upper() if e['loc'] else 'settings'}: "
        f"{e['msg'].removeprefix('Value error, ')}"
        for e in error.errors()
    ]
    return "invalid settings: " + "; ".join(problems)


def parse_run_id(text: str) -> UUID:
    try:
        return UUID(text)
    except ValueError:
        fail(f"{text!r} is not a run id (a UUID, as `stepstone runs` prints)")


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_duration(text: str, option: str) -> timedelta:
    """`90s`, `15m`, `2h`, `1h30m`, `7d`, plain seconds, or ISO 8601 (`PT2H`): a positive
    duration, or a one-line error (exit 2)."""
    raw = text.strip().lower()
    seconds: float | None = None
    if raw and _DURATION.sub("", raw) == "":
        seconds = sum(float(n) * _UNITS[u] for n, u in _DURATION.findall(raw))
    else:
        try:
            seconds = TypeAdapter(timedelta).validate_python(text.strip()).total_seconds()
        except ValidationError:
            seconds = None
    if seconds is None or not seconds > 0 or seconds == float("inf"):
        fail(f"{option} {text!r} is not a positive duration; write it like 90s, 15m, 2h, "
             "1h30m or 7d")
    return timedelta(seconds=seconds)
