"""Honest liveness: a run shows `running` only while a live process holds its lease; once its
holder is gone it reads `interrupted` (with when it was last seen) in `stepstone status`,
`stepstone runs`, the API's run and list routes and their filters, until the next resume
shows it running again. Both stores, real processes."""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import orjson
from controlkit import checkpoints, cli, engine_for, run_args, wait_for_run

from api import ApiOptions, create_app
from api.settings import ApiSettings
from engine import RunStatus, Settings, run_id_for_key
from projections import catch_up
from support import Ledger, ledger_path, wait_until

LEASE_S = 30.0  # the default lease: a holder on this machine is judged by its pid at once


def _status(store_url: str, run_id: UUID) -> dict[str, Any]:
    r = cli("status", "--json", str(run_id), "--db", store_url)
    assert r.returncode == 0, r.stderr
    return dict(orjson.loads(r.stdout))


def _api(store_url: str) -> Any:
    from fastapi.testclient import TestClient

    catch_up(store_url)
    app = create_app(Settings(database_url=store_url),
                     ApiOptions(allowed_hosts=("testserver",)), api=ApiSettings(api_token=None))
    return TestClient(app)


def _listed(client: Any, status: str) -> set[str]:
    r = client.get("/runs", params={"status": status})
    assert r.status_code == 200, r.text
    return {item["run_id"] for item in r.json()["items"]}


def test_a_killed_run_reads_interrupted_until_it_is_resumed(
    store_url: str, procs: Any, tmp_path: Path
) -> None:
    key = f"k-{uuid4()}"
    data = {"db": ledger_path(store_url, tmp_path), "chunks": 10_000, "pause_ms": 20}
    proc = procs.spawn(run_args(store_url, "chunked", data, "--key", key))
    run_id = run_id_for_key("chunked", key)
    with engine_for(store_url) as engine:
        wait_for_run(procs, proc, lambda: checkpoints(engine, run_id) >= 2, "the run under way")
        alive = _status(store_url, run_id)
        assert alive["status"] == "running"
        assert alive["held_by"] is not None
        with _api(store_url) as client:
            assert client.get(f"/runs/{run_id}").json()["status"] == "running"
            assert str(run_id) in _listed(client, "running")
        assert procs.sigkill(proc)
        killed = time.monotonic()
        wait_until(lambda: _status(store_url, run_id)["status"] == "interrupted",
                   "the status to say interrupted", timeout_s=LEASE_S + 1)
        assert time.monotonic() - killed < LEASE_S + 1
        shown = _status(store_url, run_id)
        last_event = engine.history(run_id)[-1].timestamp
        seen = datetime.fromisoformat(shown["last_seen"])
        assert last_event <= seen <= datetime.now(UTC)
        assert shown["held_by"] is None
        listing = cli("runs", "--db", store_url)
        assert "interrupted" in listing.stdout
        with _api(store_url) as client:
            body = client.get(f"/runs/{run_id}").json()
            assert body["status"] == "interrupted"
            assert body["last_seen_at"] is not None
            assert str(run_id) in _listed(client, "interrupted")
            assert str(run_id) not in _listed(client, "running")
            metrics = client.get("/metrics").text
            assert 'stepstone_runs{status="interrupted",workflow="chunked"} 1.0' in metrics
        # Resumed elsewhere: running again, held by the new process.
        before = checkpoints(engine, run_id)
        again = procs.spawn([sys.executable, "-m", "stepstone", "resume", str(run_id),
                             "--db", store_url])
        wait_for_run(procs, again, lambda: checkpoints(engine, run_id) > before + 1,
                     "the resumed run")
        back = _status(store_url, run_id)
        assert back["status"] == "running"
        assert back["held_by"] != alive["held_by"]
        with _api(store_url) as client:
            assert client.get(f"/runs/{run_id}").json()["status"] == "running"
        engine.cancel(run_id, reason="done testing", wait_s=10)
        procs.finish(again)


def test_a_holder_elsewhere_reads_running_until_its_lease_lapses(store_url: str,
                                                                  tmp_path: Path) -> None:
    import controlwf

    with engine_for(store_url) as engine:
        run_id = engine.start(controlwf.chunked, {"db": ledger_path(store_url, tmp_path)})
        run = engine.store.load(run_id)
        run.start_step("copy_chunks#0", "copy_chunks", 1, at=datetime.now(UTC),
                       worker="remote:1")
        engine.store.save_run(run)
        ledger = Ledger(store_url if store_url.startswith("postgresql")
                        else store_url.removeprefix("sqlite:///"))
        try:  # held by a process of another machine, its lease good for 1.5 s more
            ledger.execute(
                "UPDATE stepstone_queue SET lease_owner = ?, lease_expires_at = ?, "
                "owner_host = ?, owner_pid = ?, heartbeat_at = ? WHERE run_id = ?",
                ("remote:1", time.time() + 1.5, "another-machine", 1, time.time(),
                 str(run_id)),
            )
        finally:
            ledger.close()
        info = engine.status(run_id)
        assert (info.status, info.held_by) == (RunStatus.RUNNING, "remote:1")
        with _api(store_url) as client:
            assert client.get(f"/runs/{run_id}").json()["held_by"] == "remote:1"
        wait_until(lambda: engine.status(run_id).status is RunStatus.INTERRUPTED,
                   "the lease to lapse", timeout_s=1.5 + 1.0)
        with _api(store_url) as client:
            assert client.get(f"/runs/{run_id}").json()["status"] == "interrupted"


def test_a_store_without_a_runnable_index_shows_its_running_runs_interrupted(
    store_url: str,
) -> None:
    """Runs written without the engine's index (an import, another tool): nobody has ever held
    them, so the API says so instead of failing on the missing table."""
    from engine.aggregate import WorkflowRun
    from engine.storage import parse_store_url
    from engine.store import RunStore

    store = RunStore(parse_store_url(store_url))
    try:
        run = WorkflowRun.start(uuid4(), at=datetime.now(UTC), worker="elsewhere",
                                workflow="imported", workflow_version=1, entrypoint="m:f",
                                code_fingerprint="f", input={}, input_digest="d",
                                idempotency_key=None)
        run.start_step("a#0", "a", 1, at=datetime.now(UTC), worker="elsewhere")
        store.save_run(run)
    finally:
        store.close()
    with _api(store_url) as client:
        listed = client.get("/runs")
        assert listed.status_code == 200, listed.text
        assert [r["status"] for r in listed.json()["items"]] == ["interrupted"]
        assert client.get(f"/runs/{run.id}").json()["status"] == "interrupted"
        assert str(run.id) in _listed(client, "interrupted")
        assert _listed(client, "running") == set()
