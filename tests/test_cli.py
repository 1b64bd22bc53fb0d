"""The CLI: happy paths, and every bad input with its message, exit code and no write."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from uuid import uuid4

import orjson
import pytest
from click.testing import CliRunner

from engine import Engine, RunStatus
from stepstone.cli import main
from support import child_env

TESTS = Path(__file__).parent


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def event_count(url: str) -> int:
    with Engine.from_url(url) as engine:
        return engine.store.head()


def test_run_prints_json_and_history_lists_every_event(store_url: str) -> None:
    code, out, _ = invoke("run", "cliwf:summing", "--input", '{"a": 2}', "--db", store_url,
                          "--json")
    assert code == 0
    doc = orjson.loads(out)
    assert doc["status"] == "completed"
    assert doc["output"] == {"sum": 3}
    run_id = doc["run_id"]

    code, out, _ = invoke("history", run_id, "--db", store_url, "--json")
    assert code == 0
    lines = [orjson.loads(line) for line in out.splitlines()]
    assert [e["event_type"] for e in lines] == [
        "RunStarted", "StepStarted", "StepCompleted", "RunCompleted",
    ]
    assert [e["version"] for e in lines] == [1, 2, 3, 4]
    assert lines[0]["position"] < lines[-1]["position"]

    code, out, _ = invoke("runs", "--db", store_url)
    assert code == 0
    assert run_id in out
    assert "completed" in out
    code, out, _ = invoke("status", run_id, "--db", store_url, "--json")
    assert orjson.loads(out)["steps_completed"] == 1


def test_same_key_gives_the_same_run(store_url: str) -> None:
    args = ("run", "cliwf:summing", "--input", '{"a": 1}', "--key", "k", "--db", store_url,
            "--json")
    first = orjson.loads(invoke(*args)[1])
    second = orjson.loads(invoke(*args)[1])
    assert first == second
    assert event_count(store_url) == 4


BAD_RUNS = [
    pytest.param(("run", "nosuchmodule:wf"), "cannot import module 'nosuchmodule'",
                 id="unknown-module"),
    pytest.param(("run", "cliwf:nothere"), "has no attribute 'nothere'", id="unknown-workflow"),
    pytest.param(("run", "cliwf:not_a_workflow"), "is not a workflow", id="not-a-workflow"),
    pytest.param(("run", "cliwf"), "must look like package.module:workflow_name",
                 id="no-colon"),
    pytest.param(("run", "cliwf:summing", "--input", "{a: 1"), "--input is not valid JSON",
                 id="invalid-json"),
    pytest.param(("run", "cliwf:summing", "--input", "[1, 2]"), "must be a JSON object",
                 id="not-an-object"),
    pytest.param(("run", "cliwf:summing", "--input", '{"a": "x"}'),
                 "input does not fit workflow 'cli-sum' (parameters: a: int, b: int = 1): a: "
                 "Input should be a valid integer", id="wrong-type"),
    pytest.param(("run", "cliwf:summing", "--input", '{}'), "a: Field required",
                 id="missing-parameter"),
    pytest.param(("run", "cliwf:summing", "--input", '{"a": 1, "c": 2}'),
                 "c: Extra inputs are not permitted", id="unknown-parameter"),
    pytest.param(("resume", str(uuid4())), "no run with id", id="unknown-run"),
    pytest.param(("history", str(uuid4())), "no run with id", id="unknown-run-history"),
    pytest.param(("status", "not-a-uuid"), "is not a run id", id="malformed-run-id"),
]


@pytest.mark.parametrize(("args", "message"), BAD_RUNS)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    store_url: str, args: tuple[str, ...], message: str
) -> None:
    invoke("run", "cliwf:summing", "--input", '{"a": 1}', "--db", store_url)  # a store to touch
    before = event_count(store_url)
    code, out, err = invoke(*args, "--db", store_url)
    assert code == 2
    assert message in err
    assert err.startswith("error: ")
    assert err.count("\n") == 1
    assert out == ""
    assert event_count(store_url) == before


def test_unencodable_output_records_nothing_of_it_and_stays_resumable(store_url: str) -> None:
    code, _, err = invoke("run", "cliwf:unencodable", "--input", '{"n": 2}', "--db", store_url)
    assert code == 2
    assert "step 'opaque' returned a value of type object that cannot be recorded" in err
    assert err.count("\n") == 1
    with Engine.from_url(store_url) as engine:
        (info,) = engine.runs()
        types = [h.event_type for h in engine.history(info.run_id)]
    # The good step's result is kept; the bad value is never recorded, and nothing ends the run.
    assert types == ["RunStarted", "StepStarted", "StepCompleted", "StepStarted"]
    # The log says running; the process that drove it let go of it: a reader sees that.
    assert info.status is RunStatus.INTERRUPTED


@pytest.mark.parametrize(
    ("url", "message"),
    [
        pytest.param("postgresql://postgres@127.0.0.1:1/test", "Connection refused",
                     id="postgres-refused"),
        pytest.param("mysql://localhost/x", "unsupported store URL", id="unknown-scheme"),
    ],
)
def test_unreachable_store_is_a_clear_error(url: str, message: str) -> None:
    code, out, err = invoke("run", "cliwf:summing", "--input", '{"a": 1}', "--db", url)
    assert code == 2
    assert out == ""
    assert (message in err and err.startswith("error: cannot open the event store")) or (
        "unsupported" in err
    )


def test_missing_sqlite_store_is_not_created_by_reads(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'absent.db'}"
    code, _, err = invoke("runs", "--db", url)
    assert code == 2
    assert "nothing has run here yet" in err
    assert not (tmp_path / "absent.db").exists()
    code, _, err = invoke("run", "cliwf:summing", "--db", f"sqlite:///{tmp_path}/no/dir/x.db",
                          "--input", '{"a": 1}')
    assert code == 2
    assert "does not exist" in err


def test_console_script_reads_the_store_url_from_the_environment(tmp_path: Path) -> None:
    env = child_env(STEPSTONE_DATABASE_URL=f"sqlite:///{tmp_path / 'env.db'}")
    done = subprocess.run(
        [sys.executable, "-m", "stepstone", "run", "cliwf:summing", "--input", '{"a": 5}',
         "--json"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout)["output"] == {"sum": 6}
    assert (tmp_path / "env.db").exists()


def test_everyday_output_reads_right(store_url: str) -> None:
    """`runs` newest first, long names cut with an ellipsis, no Python `None` in `status`,
    and `--version`."""
    ids = []
    for a in (1, 2, 3):
        code, out, _ = invoke("run", "cliwf:summing", "--input", f'{{"a": {a}}}', "--db",
                              store_url, "--json")
        ids.append(orjson.loads(out)["run_id"])
    code, out, _ = invoke("runs", "--db", store_url)
    listed = [line.split()[0] for line in out.splitlines()[1:]]
    assert listed == ids[::-1]
    code, out, _ = invoke("runs", "--db", store_url, "--json")
    assert [r["run_id"] for r in orjson.loads(out)] == ids[::-1]
    code, out, _ = invoke("runs", "--db", store_url, "--limit", "2")
    assert [line.split()[0] for line in out.splitlines()[1:]] == ids[:0:-1]
    code, out, _ = invoke("status", ids[0], "--db", store_url)
    assert code == 0
    assert "None" not in out
    assert any(line.split() == ["error_type", "-"] for line in out.splitlines()), out
    from stepstone.output import cut

    assert cut("a-workflow-with-a-long-name", 20) == "a-workflow-with-a-l\u2026"
    assert cut("short", 20) == "short"
    code, out, _ = invoke("--version")
    assert code == 0
    from importlib.metadata import version

    assert out.strip() == f"stepstone {version('stepstone')}"
