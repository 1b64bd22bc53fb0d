"""Processes for the crash tests: spawned with their output in files, killed for real, and the
history check every crash test makes of a run that was killed and resumed."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from engine import HistoryEntry
from support import child_env

WAIT_S = 60.0


class Procs:
    """Spawns subprocesses with their output in files; kills whatever is left at the end."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.started: list[subprocess.Popen[bytes]] = []
        self._env = child_env()

    def spawn(self, args: list[str]) -> subprocess.Popen[bytes]:
        n = len(self.started)
        with (
            (self.logdir / f"{n}.out").open("wb") as out,
            (self.logdir / f"{n}.err").open("wb") as err,
        ):
            proc = subprocess.Popen(args, stdout=out, stderr=err, env=self._env)
        self.started.append(proc)
        return proc

    def output(self, proc: subprocess.Popen[bytes]) -> tuple[str, str]:
        n = self.started.index(proc)
        return (
            (self.logdir / f"{n}.out").read_text(errors="replace"),
            (self.logdir / f"{n}.err").read_text(errors="replace"),
        )

    def finish(self, proc: subprocess.Popen[bytes], timeout: float = 120.0) -> int:
        """Wait for a process that should end by itself; its output is shown if it hangs."""
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            out, err = self.output(proc)
            pytest.fail(f"process {proc.args} did not end in {timeout}s\n{out}\n{err}")

    def sigkill(self, proc: subprocess.Popen[bytes]) -> bool:
        """SIGKILL a running process: True if the kill landed, False if it had just exited."""
        os.kill(proc.pid, signal.SIGKILL)  # not reaped yet, so the pid is still this process
        rc = proc.wait(WAIT_S)
        if rc != -signal.SIGKILL:
            assert rc == 0, "\n".join(self.output(proc))
        return rc == -signal.SIGKILL

    def kill_all(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def check_history(entries: list[HistoryEntry], step_keys: list[str], last: list[str]) -> None:
    """Versions 1..n without gaps, steps strictly sequential, attempts numbered 1..m."""
    assert [e.version for e in entries] == list(range(1, len(entries) + 1))
    positions = [e.position for e in entries]
    assert positions == sorted(set(positions))
    assert entries[0].event_type == "RunStarted"
    assert [e.event_type for e in entries[-len(last) :]] == last
    order: list[str] = []
    attempts: dict[str, int] = {}
    completed: set[str] = set()
    sequence: dict[str, int] = {}
    for e in entries:
        key = e.fields.get("step_key")
        if e.event_type == "StepStarted":
            assert key not in completed, f"{key} started again after it completed"
            if key not in order:
                # Sequential workflow: a new step starts only once every earlier one completed.
                assert set(order) <= completed, f"{key} started before {set(order) - completed}"
                order.append(key)
            assert e.fields["attempt"] == attempts.get(key, 0) + 1, f"attempt gap at {key}"
            attempts[key] = e.fields["attempt"]
        elif e.event_type in ("StepCheckpointed", "StepCompleted", "StepPreempted", "StepFailed"):
            assert key in attempts, f"{e.event_type} of {key} without a StepStarted"
            assert key not in completed, f"{e.event_type} of {key} after its completion"
            assert e.fields["attempt"] == attempts[key], f"{e.event_type} of a stale attempt"
            if e.event_type == "StepCheckpointed":
                assert e.fields["sequence"] > sequence.get(key, 0)
                sequence[key] = e.fields["sequence"]
            if e.event_type == "StepCompleted":
                completed.add(key)
    assert order == step_keys[: len(order)]
    if last[-1] == "RunCompleted":
        assert order == step_keys
        assert completed == set(step_keys)
        started = sum(1 for e in entries if e.event_type == "StepStarted")
        assert started >= len(step_keys)
