"""Retention: prune with an archive under load, views equal to a rebuild, import, bad input."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any
from uuid import UUID

import orjson
import pytest
from click.testing import CliRunner
from projection_histories import Writer, open_store, random_runs, view_rows

from engine.audit.archive import records
from engine.audit.export import rows
from engine.audit.verify import verify
from engine.store import RunStore
from projections import VIEW_CLASSES, Projector
from projections.retention import FORGETTERS
from stepstone.cli import main
from support import wait_until

CUTOFF = "2026-06-01"  # the simulated runs all live in January 2026


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def run_ids(store: RunStore) -> set[UUID]:
    return {s.originator_id for s in store.started()}


def exported(store: RunStore, run_id: UUID) -> list[dict[str, Any]]:
    """The run's export records without their positions (which an import renews)."""
    return [{"version": r.version, "topic": r.topic, "event": orjson.loads(r.state)}
            for r in rows(store, run_id=run_id)]


def test_prune_under_load_archives_then_removes_finished_runs_only(
    store_url: str, tmp_path: Path
) -> None:
    store = open_store(store_url)
    sims = random_runs(store, 80, 25, seed=11)
    unfinished = {s.run.id: s.run.version for s in sims if not s.run.status.is_terminal}
    finished = {s.run.id for s in sims if s.run.status.is_terminal}
    assert unfinished
    assert len(finished) > 20
    originals = {rid: exported(store, rid) for rid in finished}
    archive = tmp_path / "old.jsonl.gz"
    writer = Writer(store_url, runs=2, seed=5000)
    stop = threading.Event()
    with Projector(store_url, batch_size=30) as follower:
        follower.catch_up()
        thread = threading.Thread(target=follower.run, args=(stop,),
                                  kwargs={"poll_interval_s": 0.02}, daemon=True)
        thread.start()
        try:
            writer.start()
            wait_until(lambda: writer.saves >= 2, "the writer to append runs")
            code, out, err = invoke("prune", "--finished-before", CUTOFF, "--archive",
                                    str(archive), "--batch-runs", "7", "--db", store_url,
                                    "--json")
        finally:
            # Both threads end before their connections close, whatever failed: a SQLite
            # connection closed under a thread that is using it crashes the process.
            stop.set()
            thread.join(timeout=30)
            writer.finish()
        assert not thread.is_alive()
    assert code == 0, err
    report = orjson.loads(out)
    removed = set(map(UUID, report["chosen"])) - set(map(UUID, report["kept"]))
    assert finished - set(map(UUID, report["kept"])) <= removed
    assert report["removed_runs"] == len(removed)
    left = run_ids(store)
    assert not removed & left
    for rid, version in unfinished.items():  # untouched, whole
        assert store.load(rid).version == version
    # The archive verifies on its own and holds every removed run whole.
    code, _, err = invoke("verify", "--archive", str(archive))
    assert code == 0, err
    archived = {UUID(r["run_id"]) for r in records(archive)}
    assert removed <= archived
    # The views kept up to date equal a rebuild from the log that is left.
    with Projector(store) as projector:
        projector.catch_up()
        kept_up = view_rows(projector)
        assert not {str(r) for r in removed} & {str(r[0]) for r in kept_up["stepstone_view_runs"]}
        projector.rebuild()
        assert view_rows(projector) == kept_up
    # The archive imports back: the same events, byte for byte, and their chains verify.
    target_url = f"sqlite:///{tmp_path / 'restored.db'}"
    code, out, err = invoke("import", str(archive), "--db", target_url, "--json")
    target = open_store(target_url)
    assert code == 0, err
    assert set(map(UUID, orjson.loads(out)["imported"])) == archived
    for rid in removed & finished:
        assert exported(target, rid) == originals[rid]
    assert verify(target, snapshots="none").ok
    code, out, _ = invoke("import", str(archive), "--db", target_url, "--json")
    assert code == 0  # again: every run is there already, nothing is added
    assert orjson.loads(out)["imported"] == []
    target.close()
    store.close()


def test_dry_run_and_filters_choose_without_deleting(store_url: str) -> None:
    store = open_store(store_url)
    sims = random_runs(store, 30, 20, seed=12)
    head = store.head()
    code, out, _ = invoke("prune", "--finished-before", CUTOFF, "--workflow", "ingest",
                          "--status", "cancelled,failed", "--dry-run", "--db", store_url,
                          "--json")
    assert code == 0
    chosen = set(map(UUID, orjson.loads(out)["chosen"]))
    expected = {s.run.id for s in sims if s.run.state.workflow == "ingest"
                and s.run.status.value in ("cancelled", "failed")}
    assert chosen <= expected
    assert len(expected - chosen) <= 1  # SQLite keeps the run holding the newest position
    assert store.head() == head
    assert len(run_ids(store)) == 30
    store.close()


@pytest.mark.parametrize(("args", "message"), [
    (("--finished-before", "2999-01-01"), "in the future"),
    (("--finished-before", "ninety days"), "neither a date"),
    (("--finished-before", "90d", "--status", "running"), "only finished runs"),
    (("--finished-before", "90d", "--status", "done"), "unknown status done"),
    (("--finished-before", "90d", "--archive", "/nonexistent-dir/a.jsonl.gz"),
     "cannot write there"),
])
def test_bad_input_exits_2_and_deletes_nothing(store_url: str, args: tuple[str, ...],
                                               message: str) -> None:
    store = open_store(store_url)
    random_runs(store, 10, 10, seed=13)
    head, count = store.head(), len(run_ids(store))
    code, out, err = invoke("prune", *args, "--db", store_url)
    assert code == 2
    assert out == ""
    assert message in err
    assert (store.head(), len(run_ids(store))) == (head, count)
    store.close()


def test_an_existing_archive_is_never_overwritten(store_url: str, tmp_path: Path) -> None:
    store = open_store(store_url)
    random_runs(store, 10, 10, seed=14)
    archive = tmp_path / "a.jsonl.gz"
    archive.write_bytes(b"precious")
    code, _, err = invoke("prune", "--finished-before", CUTOFF, "--archive", str(archive),
                          "--db", store_url)
    assert code == 2
    assert "exists" in err
    assert archive.read_bytes() == b"precious"
    assert len(run_ids(store)) == 10
    store.close()


def test_a_rebuild_in_progress_stops_the_prune(store_url: str) -> None:
    store = open_store(store_url)
    random_runs(store, 10, 10, seed=15)
    with Projector(store) as projector:
        projector.catch_up()
        view = projector.views[0]
        with projector.db.transaction(ddl=True) as tx:  # what a rebuild that died leaves
            tx.execute(f"CREATE TABLE {projector.db.q(view.table + '__rebuild')} (x INTEGER)")
    code, _, err = invoke("prune", "--finished-before", CUTOFF, "--db", store_url)
    assert code == 2
    assert "rebuild" in err
    assert len(run_ids(store)) == 10
    store.close()


def test_a_tampered_archive_fails_verification_and_import(store_url: str,
                                                          tmp_path: Path) -> None:
    store = open_store(store_url)
    random_runs(store, 6, 10, seed=16)
    archive = tmp_path / "a.jsonl"
    code, _, err = invoke("prune", "--finished-before", CUTOFF, "--archive", str(archive),
                          "--db", store_url)
    assert code == 0, err
    lines = archive.read_bytes().splitlines()
    record = orjson.loads(lines[1])
    record["event"]["worker_id"] = "mallory"
    lines[1] = orjson.dumps(record)
    archive.write_bytes(b"\n".join(lines) + b"\n")
    code, _, err = invoke("verify", "--archive", str(archive))
    assert code == 1
    assert "TAMPERED" in err
    target = f"sqlite:///{tmp_path / 'restored.db'}"
    code, _, err = invoke("import", str(archive), "--db", target)
    assert code == 2
    assert "does not verify" in err
    store.close()


def test_every_view_says_how_it_forgets_a_run() -> None:
    assert set(FORGETTERS) == set(VIEW_CLASSES.values())


def test_the_settings_policy_prunes_with_an_archive(store_url: str, tmp_path: Path) -> None:
    from engine import Engine, Settings
    from stepstone.retention_loop import prune_once

    store = open_store(store_url)
    sims = random_runs(store, 20, 12, seed=17)
    finished = {s.run.id for s in sims if s.run.status.is_terminal}
    settings = Settings(database_url=store_url, retention_finished_after_s=86400,
                        retention_archive_dir=str(tmp_path))
    with Engine(settings) as engine:
        prune_once(engine)
    assert len(run_ids(store) & finished) <= 1  # SQLite keeps the newest position's run
    (archive,) = tmp_path.glob("stepstone-*.jsonl.gz")
    code, _, err = invoke("verify", "--archive", str(archive))
    assert code == 0, err
    store.close()


def test_a_following_projector_applies_the_policy_on_its_period(
    store_url: str, procs: Any, tmp_path: Path
) -> None:
    import signal
    import sys

    store = open_store(store_url)
    sims = random_runs(store, 20, 12, seed=18)
    finished = {s.run.id for s in sims if s.run.status.is_terminal}
    procs._env.update(STEPSTONE_RETENTION_FINISHED_AFTER_S="86400",
                      STEPSTONE_RETENTION_INTERVAL_S="0.2")
    proc = procs.spawn([sys.executable, "-m", "stepstone", "projections", "run", "--db",
                        store_url])
    wait_until(lambda: len(run_ids(store) & finished) <= 1, "the projector to prune")
    proc.send_signal(signal.SIGTERM)
    assert procs.finish(proc) == 0, procs.output(proc)
    store.close()


def test_the_api_reads_around_the_holes_a_prune_leaves(store_url: str) -> None:
    import sys

    api_tests = str(Path(__file__).parents[1] / "api")  # the API tests' client factory
    if api_tests not in sys.path:
        sys.path.insert(0, api_tests)
    from world import client_for

    store = open_store(store_url)
    sims = random_runs(store, 30, 12, seed=19)
    code, out, err = invoke("prune", "--finished-before", CUTOFF, "--db", store_url, "--json")
    assert code == 0, err
    report = orjson.loads(out)
    gone = set(report["chosen"]) - set(report["kept"])
    assert gone
    left = {str(s.run.id) for s in sims} - gone
    with client_for(store_url) as client:
        listed = {r["run_id"] for r in client.get("/runs", params={"limit": 100}).json()["items"]}
        assert listed == left
        for rid in list(gone)[:3]:
            assert client.get(f"/runs/{rid}").status_code == 404
            assert client.get(f"/runs/{rid}/events").status_code == 404
        for rid in left:
            page = client.get(f"/runs/{rid}/events", params={"limit": 1000}).json()
            assert [e["version"] for e in page["items"]] == list(
                range(1, store.load(UUID(rid)).version + 1))
        assert client.get("/readyz").status_code == 200
    store.close()


@pytest.mark.parametrize("seed", range(5))
def test_a_partial_prune_leaves_views_equal_to_a_rebuild(store_url: str, seed: int) -> None:
    """Some runs of a workflow go and others stay: the totals they share lose exactly what the
    pruned runs added (random histories: crashes, retries, failures, preemptions, cancels)."""
    from datetime import UTC, datetime

    from engine import Engine, RunStatus, Settings
    from engine.audit.retention import Policy
    from stepstone.pruning import prune

    store = open_store(store_url)
    random_runs(store, 40, 30, seed=100 + seed)
    policy = Policy(datetime(2026, 6, 1, tzinfo=UTC), workflow="ingest",
                    statuses=frozenset({RunStatus.COMPLETED, RunStatus.FAILED}))
    with Engine(Settings(database_url=store_url)) as engine:
        report = prune(engine, policy, max_runs=3)
    assert report.removed_runs
    with Projector(store) as projector:
        projector.catch_up()
        kept_up = view_rows(projector)
        projector.rebuild()
        assert view_rows(projector) == kept_up
    store.close()
