"""Restart to first resumed step: how long a killed run waits for its new process to go on.

A run of `--steps` no-op steps is killed with SIGKILL at step `--kill-at` (the step's own
process kills itself, so the kill lands at the same place every time). Then a new process is
started that resumes it, and the time from starting that process to the killed step's code
running again is measured: interpreter start, imports, opening the store, loading the run
and committing the step's new `StepStarted`. The same for DBOS (its `DBOS.launch()` recovers
the pending workflow) on the same databases, when `dbos` is installed. Beside them, the floor:
starting a Python process that imports nothing. Best / median of `--repeat`.

    python bench/restart_resume.py [--steps 200] [--kill-at 100] [--repeat 5]
        [--postgres-url URL] [--skip-postgres] [--no-dbos]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager as ContextManager
from contextlib import contextmanager
from typing import Any

T_IMPORT = time.perf_counter()
PHASE = os.environ.get("BENCH_PHASE", "")
FIRST = "first"  # the process that is killed at `kill_at`
RESUME = "resume"  # the process whose first step is timed


def _unit(i: int, kill_at: int) -> int:
    if PHASE == FIRST and i == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    if PHASE == RESUME:
        print(f"first-step {time.time()!r}", flush=True)
        os._exit(0)  # only the first resumed step is timed
    return i


def stepstone_child(url: str, key: str, steps: int, kill_at: int) -> None:
    t0 = time.perf_counter()
    from engine import Engine, Settings, step, workflow

    print(f"import {time.perf_counter() - t0!r}", flush=True)
    unit = step(name="unit")(_unit)

    @workflow("restart_chain")
    def chain(n: int, kill_at: int) -> int:
        return sum(unit(i, kill_at) for i in range(n))

    with Engine(Settings(database_url=url, worker_id=f"bench:{os.getpid()}")) as engine:
        engine.run(chain, {"n": steps, "kill_at": kill_at}, key=key)


def dbos_child(url: str, schema: str | None, key: str, steps: int, kill_at: int) -> None:
    t0 = time.perf_counter()
    from dbos import DBOS, SetWorkflowID

    print(f"import {time.perf_counter() - t0!r}", flush=True)
    unit = DBOS.step(name="unit")(_unit)

    @DBOS.workflow(name="restart_chain")
    def chain(n: int, kill_at: int) -> int:
        return sum(unit(i, kill_at) for i in range(n))

    config: Any = {"name": "stepstone-bench", "system_database_url": url, "log_level": "WARNING"}
    if schema:
        config["dbos_system_schema"] = schema
    DBOS(config=config)
    DBOS.launch()  # recovers this executor's pending workflows: the resume
    if PHASE == FIRST:
        with SetWorkflowID(key):
            chain(steps, kill_at)
    time.sleep(60)  # the recovery thread runs the resumed step and exits the process


def trial(system: str, url: str, schema: str, args: argparse.Namespace) -> tuple[float, float]:
    """One kill and resume; (seconds to the first resumed step, seconds spent importing)."""
    key = str(uuid.uuid4())
    child = [sys.executable, __file__, "--child", system, url, schema, key, str(args.steps),
             str(args.kill_at)]
    first = subprocess.run(child, env={**os.environ, "BENCH_PHASE": FIRST},
                           capture_output=True, text=True, timeout=120, check=False)
    if first.returncode != -signal.SIGKILL:
        raise RuntimeError(f"{system}: the first process was not killed:\n{first.stderr}")
    t0 = time.time()
    out = subprocess.run(child, env={**os.environ, "BENCH_PHASE": RESUME},
                         capture_output=True, text=True, timeout=120, check=False)
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines() if " " in line)
    if "first-step" not in lines:
        raise RuntimeError(f"{system}: no step resumed:\n{out.stdout}\n{out.stderr}")
    return float(lines["first-step"]) - t0, float(lines["import"])


def floor() -> float:
    t0 = time.time()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.time() - t0


def cell(values: list[float]) -> str:
    return f"{min(values):6.3f} / {statistics.median(values):6.3f}"


def measure(label: str, system: str, store: Callable[[], ContextManager[tuple[str, str]]],
            args: argparse.Namespace) -> None:
    """`repeat` trials, each on a fresh store (DBOS recovers every pending workflow it finds,
    and each trial leaves one behind)."""
    results = []
    for _ in range(args.repeat):
        with store() as (url, schema):
            results.append(trial(system, url, schema, args))
    print(f"{label:<28} {cell([r[0] for r in results])} s   "
          f"(import {cell([r[1] for r in results])} s)")


@contextmanager
def sqlite_store() -> Iterator[tuple[str, str]]:
    with tempfile.TemporaryDirectory() as tmp:
        yield f"sqlite:///{tmp}/store.db", ""


@contextmanager
def postgres_schema(url: str, system: str) -> Iterator[tuple[str, str]]:
    import psycopg

    schema = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        # Stepstone takes its schema in the URL; DBOS as a setting of its own.
        yield (f"{url}?schema={schema}", "") if system == "stepstone" else (url, schema)
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--kill-at", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--no-dbos", action="store_true")
    args = parser.parse_args(argv)
    try:
        import dbos  # noqa: F401
        with_dbos = not args.no_dbos
    except ImportError:
        with_dbos = False
    print(f"a {args.steps}-step run killed (SIGKILL) at step {args.kill_at}; seconds from "
          f"starting the new process to the step running again, best / median of "
          f"{args.repeat}")
    print(f"{'floor: python -c pass':<28} {cell([floor() for _ in range(args.repeat)])} s")
    systems = ["stepstone", "dbos"] if with_dbos else ["stepstone"]
    for system in systems:
        measure(f"{system}, SQLite", system, sqlite_store, args)
    if not args.skip_postgres:
        for system in systems:
            measure(f"{system}, PostgreSQL", system,
                    lambda s=system: postgres_schema(args.postgres_url, s), args)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        system, url, schema, key, steps, kill_at = sys.argv[2:8]
        if system == "stepstone":
            stepstone_child(url, key, int(steps), int(kill_at))
        else:
            dbos_child(url, schema or None, key, int(steps), int(kill_at))
        sys.exit(0)
    sys.exit(main())
