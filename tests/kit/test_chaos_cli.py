"""`stepstone chaos` end to end: real child processes, real SIGKILL and SIGTERM.

It must pass an idempotent workflow and fail one whose effect is applied again after a kill,
and the same seed must give the same kill plan.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from stepstone.chaos import kill_plan

KIT_DIR = Path(__file__).parent


def chaos(tmp_path: Path, reference: str, *args: str) -> tuple[int, dict[str, Any], str]:
    """Run the command as a user would, from a directory where the workflow module is not."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(KIT_DIR), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-m", "stepstone", "chaos", reference, "--json", *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=280, check=False,
    )
    report = orjson.loads(done.stdout) if done.stdout.strip() else {}
    return done.returncode, report, done.stderr


def check_report(report: dict[str, Any], kills: int) -> list[dict[str, Any]]:
    """What every report must say, whatever the outcome; the kills that landed."""
    assert [k["signal"] for k in report["kills"]] == [p["signal"] for p in report["plan"]]
    assert len(report["plan"]) == kills
    landed = [k for k in report["kills"] if k["landed"]]
    assert report["kills_landed"] == len(landed)
    assert len(landed) >= kills - 1, report["kills"]  # delays are planned to land in the run
    for k in landed:
        assert k["exit_code"] == (-9 if k["signal"] == "SIGKILL" else 75)
        assert k["resume_s"] is not None
        assert k["resume_s"] > 0
        if k["signal"] == "SIGKILL":
            assert k["step"] is not None  # a kill -9 lands mid-step: the log shows it open
    return landed


def test_kill_plan_is_reproducible_and_mixes_signals() -> None:
    assert kill_plan(11, 6) == kill_plan(11, 6)
    assert kill_plan(11, 6) != kill_plan(12, 6)
    for seed in range(40):
        assert {p.signal for p in kill_plan(seed, 2)} == {"SIGKILL", "SIGTERM"}
        assert all(0.3 <= p.share <= 1.0 for p in kill_plan(seed, 3))


def chaos_idempotent(tmp_path: Path, *extra: str) -> None:
    rc, report, err = chaos(tmp_path, "chaoswf:idempotent", "--kills", "3", "--seed", "5",
                            *extra)
    assert rc == 0, err
    assert report["matched"] is True
    assert report["status"] == "completed"
    assert report["output"] == report["reference_output"]
    assert report["output"]["marks"] == list(range(1, 11))
    landed = check_report(report, 3)
    killed = [k for k in landed if k["signal"] == "SIGKILL"]
    # A kill -9 mid-step makes that step start again: the at-least-once window is reported.
    assert {k["step"] for k in killed} <= set(report["repeated_steps"])
    assert killed or not report["repeated_steps"]


def test_chaos_passes_an_idempotent_workflow(tmp_path: Path) -> None:
    chaos_idempotent(tmp_path)


@pytest.mark.slow
def test_chaos_soak_many_kills_on_a_longer_run(tmp_path: Path) -> None:
    args = ["--kills", "12", "--seed", "2026", "--input",
            '{"steps": 30, "work_ms": 60, "unit_count": 40, "unit_ms": 20}']
    rc, report, err = chaos(tmp_path, "chaoswf:idempotent", *args)
    assert rc == 0, err
    assert report["matched"] is True
    assert report["output"]["marks"] == list(range(1, 31))
    check_report(report, 12)


def test_chaos_passes_an_idempotent_workflow_on_postgres(tmp_path: Path, pg_schema: str) -> None:
    chaos_idempotent(tmp_path, "--db", pg_schema)


def test_chaos_fails_a_non_idempotent_workflow_with_the_same_plan_each_time(
    tmp_path: Path,
) -> None:
    reports = []
    for attempt in ("first", "second"):
        work = tmp_path / attempt
        work.mkdir()
        rc, report, err = chaos(work, "chaoswf:append", "--kills", "3", "--seed", "5")
        assert rc == 1, err
        assert report["matched"] is False
        assert report["status"] == "completed"
        assert report["reference_output"] == list(range(1, 11))
        landed = check_report(report, 3)
        # Each SIGKILL mid-step appended a line that the re-run appended again.
        sigkills = [k for k in landed if k["signal"] == "SIGKILL"]
        assert sigkills
        assert report["output"][-1] == 10 + len(sigkills)
        reports.append(report)
    assert reports[0]["plan"] == reports[1]["plan"]
    assert reports[0]["seed"] == reports[1]["seed"] == 5


def test_usage_errors_exit_2_before_anything_runs(tmp_path: Path) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(KIT_DIR), env.get("PYTHONPATH")]))
    bad = subprocess.run(
        [sys.executable, "-m", "stepstone", "chaos", "chaoswf:append", "--input", "[1]"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert bad.returncode == 2
    assert "--input must be a JSON object" in bad.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "stepstone", "chaos", "chaoswf:nothing"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert missing.returncode == 2
    assert "has no attribute 'nothing'" in missing.stderr
