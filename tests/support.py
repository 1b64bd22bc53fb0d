"""What many tests share: one wait, one child-process environment, one ledger of effects.

- `wait_until` polls a condition (a log position reached, a row written, a line logged) until
  it holds or the deadline passes; tests wait on what they need, never on a fixed sleep.
- `child_env` is the environment of a subprocess that imports test modules.
- `Ledger` is a tiny autocommit connection to a SQLite file or a PostgreSQL schema, where
  workflow steps record their executions and effects for the test to count.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import psycopg
import pytest

TESTS_DIR = Path(__file__).resolve().parent


def wait_until(
    condition: Callable[[], object], what: str, timeout_s: float = 60.0,
    interval_s: float = 0.02,
) -> None:
    """Poll `condition` until it is true; fail the test naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


def call_when(condition: Callable[[], object], action: Callable[[], object],
              timeout_s: float = 60.0) -> threading.Thread:
    """Call `action` from a thread as soon as `condition` holds (e.g. preempt once the log
    shows a timer started); join the returned thread after the code under test returns."""
    def run() -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                return  # the test's own assertions report what did not happen
            time.sleep(0.005)
        action()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def open_step(history: Iterable[Any]) -> str | None:
    """The step a run's history (`engine.history(run_id)`) shows started and not ended."""
    opened: dict[str, None] = {}
    for e in history:
        key = str(e.fields.get("step_key"))
        if e.event_type == "StepStarted":
            opened[key] = None
        elif e.event_type in ("StepCompleted", "StepFailed", "StepPreempted"):
            opened.pop(key, None)
    return next(iter(opened), None)


def child_env(*paths: Path | str, **extra: str) -> dict[str, str]:
    """This process's environment for a child: the tests directory (and `paths`) importable,
    unbuffered output, and `extra` variables set."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [*(str(p) for p in paths), str(TESTS_DIR), env.get("PYTHONPATH")])
    )
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def ledger_path(store_url: str, tmp_path: Path) -> str:
    """Where a test's workflows record their effects: a SQLite file beside a SQLite store, the
    test's own schema on PostgreSQL (a `Ledger` opens either)."""
    return store_url if store_url.startswith("postgres") else str(tmp_path / "ledger.db")


class Ledger:
    """A tiny autocommit connection over either backend; SQL uses `?` placeholders.

    `db` is a SQLite file path or a PostgreSQL URL whose `schema` parameter names the schema.
    """

    def __init__(self, db: str) -> None:
        self.db = db
        self.is_postgres = db.startswith(("postgresql://", "postgres://"))
        if self.is_postgres:
            parts = urlsplit(db)
            schema = parse_qs(parts.query).get("schema", ["public"])[0]
            self._pg = psycopg.connect(
                urlunsplit(parts._replace(query="")),
                autocommit=True,
                options=f"-c search_path={schema}",
            )
        else:
            self._lite = sqlite3.connect(db, isolation_level=None, timeout=30)
            self._lite.execute("PRAGMA journal_mode=WAL")

    @property
    def broken(self) -> bool:
        """True once a PostgreSQL connection is lost (a server restart): open a new one."""
        return self.is_postgres and (self._pg.closed or self._pg.broken)

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if self.is_postgres:
            with self._pg.cursor() as cur:
                cur.execute(sql.replace("?", "%s"), params)
                return list(cur.fetchall()) if cur.description else []
        return list(self._lite.execute(sql, params).fetchall())

    def scalar(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        rows = self.execute(sql, params)
        return rows[0][0] if rows else None

    def close(self) -> None:
        if self.is_postgres:
            self._pg.close()
        else:
            self._lite.close()
