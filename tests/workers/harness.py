"""Real worker processes for the many-workers tests: start, signal, kill, read their logs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from uuid import UUID

from engine import Engine, RunStatus, Settings
from support import child_env, wait_until

TESTS_DIR = Path(__file__).resolve().parent.parent
FAST_LEASE = ("--lease", "2", "--heartbeat", "0.4", "--poll", "0.1")


class WorkerProcess:
    """A `stepstone worker` process; `env` adds variables (settings such as
    STEPSTONE_MAX_TAKEOVERS) to its environment."""

    def __init__(self, store_url: str, log_dir: Path, name: str, args: Sequence[str],
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in wait()/kill()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stepstone", "worker", "--db", store_url,
             "--import", "workerwf", *args],
            cwd=TESTS_DIR, env=child_env(STEPSTONE_WORKER_ID=name, **(env or {})),
            stdout=self._log, stderr=subprocess.STDOUT,
        )

    def wait_started(self, timeout_s: float = 60) -> None:
        """Wait for the worker's "started" line (it then handles SIGTERM by draining)."""
        def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker {self.name} exited {self.proc.returncode} before "
                                     f"it started:\n{self.log()}")
            return f"worker {self.name} started" in self.log()

        wait_until(up, f"worker {self.name} to start", timeout_s)

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._log.close()

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        self._log.close()
        return code

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def workers(store_url: str, log_dir: Path, count: int, *args: str,
            prefix: str = "w") -> Iterator[list[WorkerProcess]]:
    procs = [WorkerProcess(store_url, log_dir, f"{prefix}{i}", args) for i in range(count)]
    try:
        for p in procs:
            p.wait_started()
        yield procs
    finally:
        for p in procs:
            p.kill()


def engine_for(store_url: str, **settings: Any) -> Engine:
    if str(TESTS_DIR) not in sys.path:
        sys.path.insert(0, str(TESTS_DIR))
    return Engine(Settings(database_url=store_url, worker_id="test-client", **settings))


def wait_all(engine: Engine, run_ids: Sequence[UUID], timeout_s: float) -> None:
    pending = list(run_ids)

    def finished() -> bool:
        pending[:] = [r for r in pending if not engine.status(r).status.is_terminal]
        return not pending

    wait_until(finished, f"{len(pending)} runs to finish", timeout_s, interval_s=0.1)


def ledger_url(store_url: str, tmp_path: Path) -> str:
    """Where a test's side-effect ledger lives: its PostgreSQL schema, or a SQLite file.

    Its tables are made here, once, so workers starting together do not race to create them.
    """
    import workerwf

    db = store_url if store_url.startswith("postgres") else str(tmp_path / "ledger.db")
    workerwf.ledger(db)
    return db


def completed(engine: Engine, run_id: UUID) -> bool:
    return engine.status(run_id).status is RunStatus.COMPLETED
