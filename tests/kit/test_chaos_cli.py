"""`stepstone chaos` end to end: real child processes, real SIGKILL and SIGTERM.

It must pass an idempotent workflow and fail one whose effect is applied again after a kill,
and the same seed must give the same kill plan.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from stepstone.chaos import ChaosReport, Kill, kill_plan
from stepstone.chaos_cli import show
from support import child_env

KIT_DIR = Path(__file__).parent


def stepstone(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI run as a user would, from a directory where the workflow module is not."""
    env = child_env(KIT_DIR)
    return subprocess.run([sys.executable, "-m", "stepstone", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=280, check=False)


def chaos(tmp_path: Path, reference: str, *args: str) -> tuple[int, dict[str, Any], str]:
    done = stepstone(tmp_path, "chaos", reference, "--json", *args)
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
    bad = stepstone(tmp_path, "chaos", "chaoswf:append", "--input", "[1]")
    assert bad.returncode == 2
    assert "--input must be a JSON object" in bad.stderr
    assert not list(tmp_path.iterdir())  # nothing ran, nothing was written
    missing = stepstone(tmp_path, "chaos", "chaoswf:nothing")
    assert missing.returncode == 2
    assert "has no attribute 'nothing'" in missing.stderr


def test_text_report_reads_as_the_docs_describe(capsys: pytest.CaptureFixture[str]) -> None:
    report = ChaosReport(
        workflow="lines:append", input={}, seed=5, plan=kill_plan(5, 3),
        reference_duration_s=0.8, run_id=uuid.uuid4(), store="sqlite:///chaos.db",
        repeated_steps={"append_line#5": 2}, status="completed", output=[1, 3],
        reference_output=[1, 2],
        kills=[
            Kill(1, "SIGKILL", 0.185, landed=True, exit_code=-9, step="append_line#5",
                 resume_s=1.5),
            Kill(2, "SIGTERM", 0.171, landed=True, exit_code=75, resume_s=1.2),
            Kill(3, "SIGKILL", 0.1, note="not sent: the run had already finished"),
        ],
    )
    show(report)
    lines = capsys.readouterr().out.splitlines()
    assert lines[2] == ("kill 1: SIGKILL after 0.185s: killed in step append_line#5; "
                        "resumed in 1.500s")
    assert lines[3] == "kill 2: SIGTERM after 0.171s: preempted between steps; resumed in 1.200s"
    assert lines[4] == "kill 3: SIGKILL after 0.100s: not sent: the run had already finished"
    assert "kills that landed: 2 of 3" in lines
    assert "append_line#5 x2" in lines[6]
    assert "DIFFERS" in lines[7]
    assert report.to_dict()["matched"] is False


@pytest.mark.parametrize("declared", [False, True], ids=["detected", "declared"])
def test_chaos_passes_a_correct_workflow_whose_output_is_random(
    tmp_path: Path, declared: bool
) -> None:
    extra = ["--output-varies"] if declared else []
    work = tmp_path / "kept"
    rc, report, err = chaos(tmp_path, "chaoswf:random_ids", "--kills", "2", "--seed", "3",
                            "--workdir", str(work), *extra)
    assert rc == 0, (err, report)
    assert report["matched"] is True
    assert report["output_varies"] is True
    assert report["replayed"] is True
    assert report["output"] != report["reference_output"]
    # Detected: a second uninterrupted run was made, and differed; declared: it was not.
    assert (work / "reference-again.db").exists() is not declared
    text = stepstone(tmp_path, "chaos", "chaoswf:random_ids", "--kills", "1", "--seed", "3",
                     *extra)
    assert text.returncode == 0, text.stderr
    assert "varies by design" in text.stdout
    assert "DIFFERS" not in text.stdout
    assert "idempotent" not in text.stdout


def test_chaos_names_a_random_value_drawn_outside_a_step(tmp_path: Path) -> None:
    done = stepstone(tmp_path, "chaos", "chaoswf:random_body", "--kills", "1", "--seed", "3")
    assert done.returncode == 1, done.stderr
    assert "varies by design" in done.stdout
    assert "not deterministic between steps" in done.stdout
    assert "operation_id" not in done.stdout  # not the idempotency advice: not the cause
