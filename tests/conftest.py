"""Fixtures shared by the suite: one store per test, on SQLite and on PostgreSQL.

PostgreSQL tests run in a schema of their own, dropped afterwards. With no server they are
skipped with the reason, except under CI=true, where a missing server fails the run.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from engine import Engine, Settings

TESTS_DIR = Path(__file__).parent
sys.path.insert(0, str(TESTS_DIR))

POSTGRES_URL = os.environ.get(
    "STEPSTONE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
_pg_state: dict[str, str | None] = {}


def _postgres_problem() -> str | None:
    if "problem" not in _pg_state:
        try:
            psycopg.connect(POSTGRES_URL, connect_timeout=3).close()
            _pg_state["problem"] = None
        except psycopg.Error as e:
            _pg_state["problem"] = f"PostgreSQL not reachable at {POSTGRES_URL}: {e}".strip()
    return _pg_state["problem"]


def require_postgres() -> None:
    problem = _postgres_problem()
    if problem is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{problem} (CI=true: a missing server is a failure, not a skip)")
    pytest.skip(problem)


@contextmanager
def scratch_schema(postgres_url: str = POSTGRES_URL) -> Iterator[str]:
    """A fresh PostgreSQL schema, dropped afterwards; yields the store URL for it."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{postgres_url}?schema={schema}"
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """The store URL of a PostgreSQL schema of the test's own."""
    require_postgres()
    with scratch_schema() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty event store, once per backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
    else:
        yield request.getfixturevalue("pg_schema")


@pytest.fixture
def engine(store_url: str) -> Iterator[Engine]:
    with Engine(Settings(database_url=store_url, worker_id="test-worker")) as e:
        yield e


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Any]:
    """Subprocesses with their output in files (`crashkit.Procs`), killed at the end."""
    from crashkit import Procs

    p = Procs(tmp_path / "procs")
    try:
        yield p
    finally:
        p.kill_all()
