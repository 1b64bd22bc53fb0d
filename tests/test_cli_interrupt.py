"""A second Ctrl-C forces exit at once, and even then nothing recorded is lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from engine import Engine
from support import wait_until

DEMO = "from stepstone.cli import main; main()"


def demo(tmp: Path, url: str) -> list[str]:
    # Large chunks: the first Ctrl-C waits for the chunk's checkpoint, the second lands first.
    return [sys.executable, "-c", DEMO, "demo", "--records", "200000", "--chunk", "20000",
            "--workdir", str(tmp / "work"), "--db", url]


def checkpoints(url: str) -> int:
    try:
        with Engine.from_url(url, create=False) as engine:
            runs = engine.runs()
            if not runs:
                return 0
            history = engine.history(runs[0].run_id)
    except Exception:  # the store is still being created by the child
        return 0
    return sum(1 for h in history if h.event_type == "StepCheckpointed")


def test_second_ctrl_c_forces_exit_and_loses_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    err_path = tmp_path / "stderr.txt"
    with err_path.open("w") as err_file:
        proc = subprocess.Popen(demo(tmp_path, url), stdout=subprocess.DEVNULL,
                                stderr=err_file, text=True)
    try:
        def alive() -> bool:
            assert proc.poll() is None, err_path.read_text()
            return True

        wait_until(lambda: alive() and checkpoints(url) >= 2, "two checkpoints")
        os.kill(proc.pid, signal.SIGINT)
        # The second Ctrl-C goes once the first one was handled (two signals sent at once
        # would be delivered as one).
        wait_until(lambda: "press Ctrl-C again" in err_path.read_text(), "the first Ctrl-C")
        os.kill(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = err_path.read_text()
    assert proc.returncode == 130, err
    assert "forced exit: every recorded event is safe" in err
    recorded = checkpoints(url)
    assert recorded >= 2

    again = subprocess.run(demo(tmp_path, url), capture_output=True, text=True, timeout=120,
                           check=False)
    assert again.returncode == 0, again.stderr
    digest = again.stdout.strip().splitlines()[-1]
    assert digest.startswith("result digest: ")

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    clean = subprocess.run(demo(fresh, f"sqlite:///{fresh / 'store.db'}"), capture_output=True,
                           text=True, timeout=120, check=False)
    assert clean.stdout.strip().splitlines()[-1] == digest


def test_a_kill_9_during_data_generation_leaves_no_temp_file_behind(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    work = tmp_path / "work"
    big = [sys.executable, "-c", DEMO, "demo", "--records", "3000000", "--workdir", str(work),
           "--db", url]
    proc = subprocess.Popen(big, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def generating() -> bool:
            assert proc.poll() is None, "the demo ended before it was killed"
            return any(p.stat().st_size > 0 for p in work.glob("input-*.tmp*"))

        wait_until(generating, "the demo writing its input")
        proc.kill()  # SIGKILL: no cleanup code runs
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert list(work.glob("input-*.tmp*")), "the kill should have left a half-written input"
    small = [sys.executable, "-c", DEMO, "demo", "--records", "2000", "--workdir", str(work),
             "--db", url]
    again = subprocess.run(small, capture_output=True, text=True, timeout=120, check=False)
    assert again.returncode == 0, again.stderr
    assert list(work.glob("input-*.tmp*")) == []
    assert [p.name for p in work.glob("input-*")] == ["input-2000-7.csv"]
