"""The runnable index after a database restart, with real processes.

A connection to the index that sat idle while PostgreSQL restarted fails on its next use; the
hand-back of a finished run is that use, so the run's row must not be left leased (and later
ready) for a worker to claim. And a worker that does claim a finished run (its release was
lost) marks it done without driving it, whatever its takeover count.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from uuid import UUID

import orjson
import psycopg

from engine import Engine, Settings
from engine.storage import parse_store_url

TESTS = Path(__file__).parent.parent


def env(**extra: str) -> dict[str, str]:
    out = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get(
        "PYTHONPATH", "")]), **extra)
    out.pop("STEPSTONE_DATABASE_URL", None)
    return out


def wait_for(condition: object, what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_finished_run_is_handed_back_over_a_connection_the_database_dropped(
    pg_schema: str, tmp_path: Path
) -> None:
    gate = str(tmp_path / "gate")
    # No heartbeat during the test: the hand-back is the first use of the dropped connection.
    child = subprocess.Popen(
        [sys.executable, "-m", "stepstone", "run", "indexwf:gated", "--json", "--input",
         orjson.dumps({"gate": gate}).decode(), "--db", pg_schema],
        env=env(STEPSTONE_HEARTBEAT_INTERVAL_S="600", STEPSTONE_LEASE_DURATION_S="1200"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: Path(gate + ".waiting").exists() or child.poll() is not None,
                 "the run to reach its gate")
        assert child.poll() is None, child.communicate()
        # What a server restart does to that process's idle connection to the index.
        location = parse_store_url(pg_schema)
        e = location.env
        with psycopg.connect(host=e["POSTGRES_HOST"], port=e["POSTGRES_PORT"],
                             user=e["POSTGRES_USER"], dbname=e["POSTGRES_DBNAME"],
                             password=e["POSTGRES_PASSWORD"], autocommit=True) as admin:
            killed = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = %s", (f"stepstone-index:{child.pid}",)).fetchall()
        assert killed == [(True,)]
        Path(gate).write_text("open")
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0, err
    assert "could not hand back" not in err
    run_id = UUID(orjson.loads(out)["run_id"])
    with Engine(Settings(database_url=pg_schema)) as engine:
        row = engine.leases.row(run_id)
        assert row is not None
        assert (row.state, row.lease_owner) == ("done", None)


def test_a_worker_marks_a_finished_run_done_without_driving_it(store_url: str) -> None:
    with Engine(Settings(database_url=store_url, worker_id="gone")) as engine:
        import indexwf

        plain = engine.run(indexwf.plain, {"n": 1}).run_id
        looped = engine.run(indexwf.plain, {"n": 2}).run_id
        before = {r: len(engine.history(r)) for r in (plain, looped)}
        # As if each hand-back had been lost and the lease had expired since; the second as if
        # that had happened more often than max_takeovers (which parks unfinished runs).
        for run_id, takeovers in ((plain, 0), (looped, 50)):
            engine.leases._call(lambda cur, r=run_id, t=takeovers: cur.execute(
                engine.leases._sql(
                    "UPDATE {queue} SET state = 'ready', lease_owner = 'gone', "
                    "lease_expires_at = 1, available_at = 1, takeovers = %(t)s "
                    "WHERE run_id = %(id)s"), {"t": t, "id": str(r)}))
        worker = subprocess.Popen(
            [sys.executable, "-m", "stepstone", "worker", "--db", store_url,
             "--concurrency", "2"], env=env(STEPSTONE_WORKER_POLL_INTERVAL_S="0.1"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            def both_done() -> bool:
                rows = [engine.leases.row(r) for r in (plain, looped)]
                return all(row is not None and row.state == "done" for row in rows)

            wait_for(lambda: both_done() or worker.poll() is not None, "the worker")
            assert worker.poll() is None, worker.communicate()
        finally:
            worker.send_signal(signal.SIGTERM)
            _, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err
        assert both_done(), err
        assert {r: len(engine.history(r)) for r in (plain, looped)} == before  # not driven
        assert "0 parked" in err
