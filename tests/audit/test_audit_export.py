"""The readable history timeline and the export format."""

from __future__ import annotations

from pathlib import Path
from uuid import UUID

import orjson
from click.testing import CliRunner
from test_audit_fork import BROKEN, pipeline

from engine import Engine
from engine.audit.export import Row, read_export
from engine.audit.replay_check import check_history
from engine.audit.verify import verify_rows
from stepstone.cli import main


def test_history_timeline_shows_steps_attempts_durations_and_errors(
    engine: Engine, store_url: str
) -> None:
    BROKEN["on"] = True
    run_id = engine.run(pipeline, {"n": 3}).run_id
    out = CliRunner().invoke(main, ["history", str(run_id), "--db", store_url])
    assert out.exit_code == 0, out.output
    lines = out.stdout.splitlines()
    assert lines[0].split()[:6] == ["POS", "VER", "TIME", "(UTC)", "+ELAPSED", "EVENT"]
    completed = next(line for line in lines if "StepCompleted" in line)
    assert "fetch#0" in completed
    assert "took " in completed
    assert "[0,1,2]" in completed
    failed = next(line for line in lines if "StepFailed" in line)
    assert "scale#0" in failed
    assert "NonRetryableError: scale is broken" in failed
    assert "not retried" in failed
    assert "RunFailed" in lines[-1]
    assert "hash" not in out.stdout  # the chain is for verify and --json, not for reading
    as_json = CliRunner().invoke(main, ["history", str(run_id), "--db", store_url, "--json"])
    docs = [orjson.loads(line) for line in as_json.stdout.splitlines()]
    assert len(docs) == len(lines) - 1
    assert docs[0]["hash"]
    assert docs[1]["prev_hash"] == docs[0]["hash"]


def test_export_whole_log_one_workflow_one_run(engine: Engine, store_url: str,
                                                tmp_path: Path) -> None:
    BROKEN["on"] = False
    a = engine.run(pipeline, {"n": 2}).run_id
    b = engine.run(pipeline, {"n": 3}).run_id
    path = tmp_path / "all.jsonl"
    out = CliRunner().invoke(main, ["export", "-o", str(path), "--db", store_url])
    assert out.exit_code == 0, out.output
    records = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert len(records) == engine.store.head()
    assert [r["position"] for r in records] == sorted(r["position"] for r in records)
    first = records[0]
    assert set(first) == {"position", "run_id", "version", "type", "topic", "event"}
    assert (first["type"], first["version"]) == ("RunStarted", 1)
    assert first["event"]["class_version"] == 2
    assert first["event"]["hash"]
    # An export alone verifies, and replays through this release's mapper.
    rows = [Row(r["position"], UUID(r["run_id"]), r["version"], r["topic"],
                orjson.dumps(r["event"])) for r in records]
    assert verify_rows(rows).ok
    runs = read_export(path)
    assert set(runs) == {a, b}
    assert check_history(pipeline, runs[a]).outcome == "replays"

    one = CliRunner().invoke(main, ["export", "--run", str(a), "--db", store_url])
    assert [orjson.loads(x)["run_id"] for x in one.stdout.splitlines()] == \
        [str(a)] * engine.store.load(a).version
    wf = CliRunner().invoke(main, ["export", "--workflow", "audit-fork", "--db", store_url])
    assert len(wf.stdout.splitlines()) == len(records)
    none = CliRunner().invoke(main, ["export", "--workflow", "nope", "--db", store_url])
    assert none.stdout == ""
    both = CliRunner().invoke(main, ["export", "--workflow", "x", "--run", str(a),
                                     "--db", store_url])
    assert both.exit_code == 2
