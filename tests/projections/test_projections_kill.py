"""`kill -9` the projector at random points of its catch-up, again and again.

Each batch's view rows and its tracking record commit together, so whatever the moment of the
kill, the next process starts exactly after the last committed batch: at the end the views
must equal a clean rebuild (no event applied twice, none skipped).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from projection_histories import open_store, random_runs, view_rows

from projections import Projector
from support import wait_until


def _spawn(url: str, tmp_path: Path, n: int) -> subprocess.Popen[bytes]:
    log = (tmp_path / f"projector-{n}.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "stepstone", "projections", "run", "--db", url,
         "--batch-size", "40", "--poll-interval", "0.05"],
        stdout=log, stderr=log,
    )


def _kill_during_catch_up(store_url: str, tmp_path: Path, kills: int, seed: int) -> None:
    rng = random.Random(seed)
    store = open_store(store_url)
    random_runs(store, 60 * kills + 200, 40, seed)
    head = store.head()
    landed = 0
    with Projector(store) as watcher:
        watcher.ensure_tables()
        for n in range(kills):
            before = min(watcher.positions().values())
            proc = _spawn(store_url, tmp_path, n)
            # Wait for the batches to move, then kill at a random moment after.
            wait_until(lambda b=before, p=proc: min(watcher.positions().values()) > b
                       or p.poll() is not None, "the projector to apply a batch",
                       interval_s=0.005)
            time.sleep(rng.uniform(0.0, 0.06))
            os.kill(proc.pid, signal.SIGKILL)
            assert proc.wait(timeout=30) == -signal.SIGKILL
            landed += min(watcher.positions().values()) < head
        assert landed == kills, "every kill must land before the catch-up ends"

        last = _spawn(store_url, tmp_path, kills)
        wait_until(lambda: set(watcher.positions().values()) == {head},
                   "the views to reach the head", interval_s=0.005)
        last.send_signal(signal.SIGTERM)
        assert last.wait(timeout=30) == 0
        caught_up = view_rows(watcher)
        watcher.rebuild()
        assert view_rows(watcher) == caught_up
    store.close()


def test_kill_9_during_catch_up_a_few_times(store_url: str, tmp_path: Path) -> None:
    _kill_during_catch_up(store_url, tmp_path, kills=3, seed=11)


@pytest.mark.slow
def test_kill_9_during_catch_up_many_times(store_url: str, tmp_path: Path) -> None:
    _kill_during_catch_up(store_url, tmp_path, kills=30, seed=12)
