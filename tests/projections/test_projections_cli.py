"""`stepstone projections run | status | rebuild` as a user meets them."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner
from eventsourcing.persistence import StoredEvent
from projection_histories import open_store, random_runs, view_rows

from projections import Projector
from stepstone.cli import main
from support import wait_until


def test_status_rebuild_and_their_errors(store_url: str) -> None:
    store = open_store(store_url)
    random_runs(store, 20, 10, seed=31)
    head = store.head()
    runner = CliRunner()

    result = runner.invoke(main, ["projections", "status", "--db", store_url, "--json"])
    assert result.exit_code == 0, result.output
    assert [(s["view"], s["position"], s["head"], s["lag"]) for s in json.loads(result.output)] \
        == [(v, 0, head, head) for v in ("runs", "step_attempts", "hotspots", "workflow_stats",
                                            "published")]

    result = runner.invoke(main, ["projections", "rebuild", "runs", "--db", store_url])
    assert result.exit_code == 0, result.output
    assert f"rebuilt runs up to position {head}" in result.output
    result = runner.invoke(main, ["projections", "status", "--db", store_url])
    assert result.exit_code == 0
    lines = {line.split()[0]: line.split()[2:] for line in result.output.splitlines()[1:]}
    assert lines["runs"] == [str(head), str(head), "0"]
    assert lines["hotspots"] == ["0", str(head), str(head)]

    result = runner.invoke(main, ["projections", "rebuild", "progress", "--db", store_url])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == (
        "error: no view named 'progress'; the views are: runs, step_attempts, hotspots, "
        "workflow_stats, published"
    )

    store.recorder.insert_events([StoredEvent(
        originator_id=store.recorder.select_notifications(None, 1)[0].originator_id,
        originator_version=999, topic="engine.events:RunPaused", state=b"{}",
    )])
    result = runner.invoke(main, ["projections", "rebuild", "--db", store_url])
    assert result.exit_code == 2
    error = result.output.strip().splitlines()[-1]
    assert error.startswith(f"error: the event at position {head + 1} cannot be projected")
    assert "engine.events:RunPaused" in error
    store.close()


def test_run_follows_the_log_and_stops_cleanly_on_sigterm(store_url: str, tmp_path: Path) -> None:
    store = open_store(store_url)
    random_runs(store, 10, 10, seed=32)
    err = (tmp_path / "run.err").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "stepstone", "projections", "run", "--db", store_url,
         "--poll-interval", "0.05"],
        stdout=subprocess.PIPE, stderr=err,
    )
    try:
        with Projector(store) as watcher:
            for seed in (33, 34):  # events before and while it runs
                random_runs(store, 10, 10, seed=seed)
                head = store.head()

                def caught_up(h: int = head) -> bool:
                    assert proc.poll() is None, (tmp_path / "run.err").read_text()
                    return set(watcher.positions().values()) == {h}

                wait_until(caught_up, "the projector to reach the head")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
            followed = view_rows(watcher)
            watcher.rebuild()
            assert view_rows(watcher) == followed
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "stopping after the batch in flight" in (tmp_path / "run.err").read_text()
    store.close()
