"""Real store faults under real processes: a full disk, killed connections, a server restart.

Each ends with a log that has no version gap and verifies, and a run that completes with the
output of a clean run, by going on in the same process or by running the same command again.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from conftest import require_postgres, scratch_schema
from engine import Engine, RunStatus
from engine.audit.verify import verify
from pgcluster import private_cluster
from support import child_env, wait_until

TESTS_DIR = Path(__file__).resolve().parent


def stepstone(*args: str, env: dict[str, str] | None = None,
              timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stepstone", *args], cwd=TESTS_DIR,
                          env=child_env(**(env or {})), capture_output=True, text=True,
                          timeout=timeout)


def check_run(url: str, key_or_id: Any, expected: object) -> None:
    """No version gap, the chain verifies, the run completed with `expected`."""
    with Engine.from_url(url) as engine:
        infos = [i for i in engine.runs() if i.run_id == key_or_id or
                 i.idempotency_key == key_or_id]
        assert len(infos) == 1, infos
        run_id = infos[0].run_id
        versions = [e.version for e in engine.history(run_id)]
        assert versions == list(range(1, len(versions) + 1)), f"a hole: {versions}"
        report = verify(engine.store, run_id)
        assert report.ok, report.problems
        info = engine.status(run_id)
        assert info.status is RunStatus.COMPLETED
        assert info.output == expected


def run_until_done(args: list[str], env: dict[str, str], tries: int = 10) -> list[int]:
    """Run the same command again after every exit 75 (a store fault); the exit codes."""
    codes = []
    for _ in range(tries):
        done = stepstone(*args, env=env)
        assert "Traceback" not in done.stderr, done.stderr
        codes.append(done.returncode)
        if done.returncode == 0:
            return codes
        assert done.returncode == 75, done.stderr
        assert "progress saved; run the same command again" in done.stderr
    raise AssertionError(f"no completion after {tries} tries: {codes}")


@contextmanager
def tmpfs(size: str) -> Iterator[Path]:
    where = Path(f"/tmp/stepstone-tmpfs-{uuid.uuid4().hex[:8]}")
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                              str(where)], capture_output=True, text=True)
    if mounted.returncode != 0:
        where.rmdir()
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}): the full-disk "
                    "test needs a small file system of its own")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], capture_output=True)
        where.rmdir()


def test_a_full_disk_mid_checkpoint_leaves_no_hole_and_the_same_command_resumes() -> None:
    with tmpfs("3m") as disk:
        url = f"sqlite:///{disk / 'store.db'}"
        ballast = disk / "ballast"
        ballast.write_bytes(b"\0" * 1_700_000)  # small events fit, 8 x 150 KB checkpoints not
        args = ["run", "faultwf:big_checkpoints", "--input", '{"count": 8, "size": 150000}',
                "--key", "disk", "--db", url]
        env = {"STEPSTONE_STORE_RETRY_S": "0"}
        first = stepstone(*args, env=env)
        assert first.returncode == 75, first.stderr
        assert "could not write to the event store" in first.stderr
        assert "full" in first.stderr
        assert "Traceback" not in first.stderr
        with Engine.from_url(url) as engine:
            (info,) = engine.runs()
            versions = [e.version for e in engine.history(info.run_id)]
            assert versions == list(range(1, len(versions) + 1))
            assert not info.status.is_terminal  # the fault is no failure of the step's
            failed = [e for e in engine.history(info.run_id) if e.event_type == "StepFailed"]
            assert failed == []
        for command in (["status", info.run_id.hex], ["runs"], ["verify"]):
            shown = stepstone(*command, "--db", url)
            assert shown.returncode == 0, shown.stderr
        ballast.unlink()  # space is freed: the same command goes on from the last checkpoint
        codes = run_until_done(args, env)
        assert codes == [0]
        check_run(url, "disk", 8 + 9)


def kill_connections(admin_url: str, app: str, stop: threading.Event, every_s: float) -> int:
    """pg_terminate_backend of every connection named `app`, every `every_s`; the kill count."""
    killed = 0
    with psycopg.connect(admin_url, autocommit=True) as conn:
        while not stop.wait(every_s):
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = %s AND pid <> pg_backend_pid()", (app,)).fetchall()
            killed += len(rows)
    return killed


@contextmanager
def connection_killer(admin_url: str, app: str, every_s: float) -> Iterator[list[int]]:
    stop = threading.Event()
    out: list[int] = []
    thread = threading.Thread(
        target=lambda: out.append(kill_connections(admin_url, app, stop, every_s)))
    thread.start()
    try:
        yield out
    finally:
        stop.set()
        thread.join()


@pytest.mark.postgres
def test_killed_connections_under_stepstone_run_leave_no_hole() -> None:
    require_postgres()
    from conftest import POSTGRES_URL

    app = f"stepstone-faults-{uuid.uuid4().hex[:8]}"
    with scratch_schema() as url:
        args = ["run", "faultwf:slow_chain", "--input", '{"n": 60, "pause_ms": 40}',
                "--key", "killed", "--db", url]
        with connection_killer(POSTGRES_URL, app, 0.7) as killed:
            codes = run_until_done(args, {"PGAPPNAME": app})
        assert killed[0] >= 3  # the faults landed: connections of the run were killed
        assert codes[-1] == 0
        check_run(url, "killed", sum(i * 2 for i in range(60)))


@pytest.mark.postgres
def test_killed_connections_under_a_worker_leave_no_hole(tmp_path: Path) -> None:
    require_postgres()
    from conftest import POSTGRES_URL

    app = f"stepstone-faults-{uuid.uuid4().hex[:8]}"
    with scratch_schema() as url:
        with Engine.from_url(url) as engine:
            import faultwf

            ids = [engine.start(faultwf.slow_chain, {"n": 40, "pause_ms": 40}, key=f"w{i}")
                   for i in range(2)]
        child = child_env(PGAPPNAME=app)
        log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115 - closed below
        worker = subprocess.Popen(
            [sys.executable, "-m", "stepstone", "worker", "--db", url, "--import", "faultwf",
             "--concurrency", "2", "--lease", "2", "--heartbeat", "0.4", "--poll", "0.1"],
            cwd=TESTS_DIR, env=child, stdout=log, stderr=subprocess.STDOUT)
        try:
            with connection_killer(POSTGRES_URL, app, 0.7) as killed:
                time.sleep(8)  # the faults go on for a while, whatever the runs do meanwhile
            assert killed[0] >= 3
            with Engine.from_url(url) as engine:
                wait_until(lambda: all(engine.status(r).status.is_terminal for r in ids),
                           "the worker finishing the runs", timeout_s=120)
        finally:
            worker.terminate()
            code = worker.wait(timeout=60)
            log.close()
        text = (tmp_path / "worker.log").read_text(errors="replace")
        assert code == 0, text[-3000:]
        for i in range(2):
            check_run(url, f"w{i}", sum(j * 2 for j in range(40)))


@pytest.mark.postgres
def test_a_database_stopped_and_started_again_mid_run_loses_nothing() -> None:
    with private_cluster() as cluster:
        args = ["run", "faultwf:slow_chain", "--input", '{"n": 80, "pause_ms": 40}',
                "--key", "outage", "--db", cluster.url]
        proc = subprocess.Popen([sys.executable, "-m", "stepstone", *args], cwd=TESTS_DIR,
                                env=child_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            with Engine.from_url(cluster.url) as engine:
                wait_until(lambda: bool(engine.runs()) and
                           engine.runs()[0].steps_completed >= 10, "ten steps done")
            cluster.halt()
            time.sleep(3)  # an outage shorter than the retry budget and the lease
            cluster.start()
            _, err = proc.communicate(timeout=180)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert "Traceback" not in err, err
        assert proc.returncode == 0, err
        check_run(cluster.url, "outage", sum(i * 2 for i in range(80)))


@pytest.mark.postgres
def test_a_run_whose_lease_was_taken_over_exits_75_and_writes_nothing_more(
    tmp_path: Path,
) -> None:
    require_postgres()
    import signal

    with scratch_schema() as url:
        child = child_env(STEPSTONE_LEASE_DURATION_S="2", STEPSTONE_HEARTBEAT_INTERVAL_S="0.4")
        proc = subprocess.Popen(
            [sys.executable, "-m", "stepstone", "run", "faultwf:slow_chain", "--input",
             '{"n": 120, "pause_ms": 40}', "--key", "paused", "--db", url],
            cwd=TESTS_DIR, env={**child, "STEPSTONE_WORKER_ID": "paused-run"},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        with Engine.from_url(url) as engine:
            wait_until(lambda: bool(engine.runs()) and engine.runs()[0].steps_completed >= 5,
                       "five steps done")
            run_id = engine.runs()[0].run_id
            proc.send_signal(signal.SIGSTOP)  # paused: its lease lapses
            log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115 - closed below
            worker = subprocess.Popen(
                [sys.executable, "-m", "stepstone", "worker", "--db", url, "--import",
                 "faultwf", "--lease", "2", "--heartbeat", "0.4", "--poll", "0.1"],
                cwd=TESTS_DIR, env={**child, "STEPSTONE_WORKER_ID": "takeover"}, stdout=log,
                stderr=subprocess.STDOUT)
            try:
                try:
                    wait_until(lambda: any(e.event_type == "RunResumed" and
                                           e.fields.get("reason") == "lease_expired"
                                           for e in engine.history(run_id)),
                               "the worker taking the run over")
                    taken_at = len(engine.history(run_id))
                finally:
                    proc.send_signal(signal.SIGCONT)
                _, err = proc.communicate(timeout=60)
                assert proc.returncode == 75, err
                assert "no longer holds the run's lease" in err
                assert "progress saved; run the same command again" in err
                assert "Another worker" not in err
                assert "Traceback" not in err
                after = engine.history(run_id)[taken_at:]
                # The paused process wrote nothing after the takeover.
                assert [e for e in after if e.worker_id == "paused-run"] == []
                wait_until(lambda: engine.status(run_id).status.is_terminal, "the run's end",
                           timeout_s=120)
            finally:
                for child_proc in (proc, worker):
                    if child_proc.poll() is None:
                        child_proc.kill()
                    child_proc.wait(timeout=60)
                log.close()
        check_run(url, "paused", sum(i * 2 for i in range(120)))
