"""Fixtures and data for the API tests: a log of real runs per store, projected once per session.

The runs cover what the views must get right: plain completions, retries, a run that fails
for good, a run preempted and resumed, one left preempted, and one whose worker died mid-step
(a child process killed by `os._exit`) and that another worker finished.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import apiwf
import pytest
from fastapi.testclient import TestClient

from api import ApiOptions, create_app
from api.settings import ApiSettings
from conftest import require_postgres, scratch_schema
from engine import Engine, HistoryEntry, RunInfo, RunStatus, Settings
from projections import catch_up
from support import child_env, wait_until

API_DIR = Path(__file__).parent


@dataclass
class World:
    """A store with real runs, and what the engine's own replay says of each."""

    url: str
    runs: dict[str, UUID] = field(default_factory=dict)
    infos: dict[UUID, RunInfo] = field(default_factory=dict)
    histories: dict[UUID, list[HistoryEntry]] = field(default_factory=dict)

    def refresh(self) -> None:
        with Engine(Settings(database_url=self.url)) as engine:
            for run in engine.runs():
                self.infos[run.run_id] = run
                self.histories[run.run_id] = engine.history(run.run_id)


def make_runs(url: str) -> World:
    world = World(url)
    with Engine(Settings(database_url=url, worker_id="api-test")) as engine:
        apiwf.PREEMPT_HOOK[0] = lambda: engine.preempt("test preempts it")
        world.runs["completed"] = engine.run(apiwf.counting, {"total": 12}).run_id
        world.runs["retried"] = engine.run(apiwf.retrying, {"name": url + "r"}).run_id
        world.runs["failed"] = engine.run(apiwf.failing, {"row": 7}).run_id
        resumed = engine.run(apiwf.counting, {"total": 10, "stop_at": 4}).run_id
        engine.token.clear()
        engine.resume(resumed)
        world.runs["resumed"] = resumed
        world.runs["preempted"] = engine.run(apiwf.counting, {"total": 9, "stop_at": 3}).run_id
        engine.token.clear()
        assert engine.status(world.runs["preempted"]).status is RunStatus.PREEMPTED
        for i in range(8):
            engine.run(apiwf.counting, {"total": i + 1})
        crash = engine.start(apiwf.crashing, {"marker": "m"})
    child = subprocess.run(
        [sys.executable, "-c", apiwf.CRASH_CODE, url, str(crash)],
        env=child_env(API_DIR), capture_output=True, timeout=60,
    )
    assert child.returncode == 9, child.stderr.decode()
    with Engine(Settings(database_url=url, worker_id="rescuer")) as engine:
        assert engine.resume(crash).status is RunStatus.COMPLETED
    world.runs["crashed"] = crash
    catch_up(url)
    world.refresh()
    return world


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[World]:
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("world") / "store.db"
        yield make_runs(f"sqlite:///{path}")
        return
    require_postgres()
    with scratch_schema() as url:
        yield make_runs(url)


def client_for(url: str, token: str | None = None, **options: Any) -> TestClient:
    settings = Settings(database_url=url)
    options.setdefault("allowed_hosts", ("testserver", "localhost", "127.0.0.1"))
    api = ApiSettings(api_token=token)
    return TestClient(create_app(settings, ApiOptions(**options), api=api))


@pytest.fixture(scope="session")
def client(world: World) -> Iterator[TestClient]:
    with client_for(world.url) as c:
        yield c


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Server:
    """`stepstone serve` in a subprocess (with its projector child), stopped by SIGTERM."""

    def __init__(self, url: str, logdir: Path, *, token: str | None = None,
                 extra: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = child_env(API_DIR)
        env.pop("STEPSTONE_API_TOKEN", None)
        if token is not None:
            env["STEPSTONE_API_TOKEN"] = token
        self.out = logdir / "serve.out"
        self.err = logdir / "serve.err"
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "stepstone", "serve", "--db", url, "--port",
                 str(self.port), *extra],
                stdout=out, stderr=err, env=env,
            )
        self.wait_until_up()

    def wait_until_up(self, timeout_s: float = 30) -> None:

        import httpx

        def up() -> bool:
            if self.proc.poll() is not None:
                pytest.fail(f"stepstone serve exited early:\n{self.logs()}")
            try:
                return httpx.get(self.base + "/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, "stepstone serve to answer /healthz", timeout_s, interval_s=0.05)

    def children(self) -> list[int]:
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [int(p) for p in path.read_text().split()] if path.exists() else []

    def stop(self) -> int:
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"stepstone serve ignored SIGTERM:\n{self.logs()}")

    def logs(self) -> str:
        return self.out.read_text(errors="replace") + self.err.read_text(errors="replace")
