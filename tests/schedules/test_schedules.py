"""Schedules on both stores, on a simulated clock: one run per tick with any number of workers
racing (real processes, some killed with SIGKILL), the missed-tick policies, pause and resume,
and every bad input refused with one line, exit 2, nothing written."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import schedwf
from engine import Engine, InvalidInputError, Settings, run_id_for_key
from engine.schedules import (
    ScheduleNotFoundError,
    add_schedule,
    declare_schedules,
    fire_due,
    get_schedule,
    list_schedules,
    set_paused,
    tick_key,
)
from support import TESTS_DIR, child_env, wait_until

T0 = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)  # on every cron grid


def minutes(n: float) -> datetime:
    return T0 + timedelta(minutes=n)


def keys_started(engine: Engine) -> list[str]:
    return sorted(s.idempotency_key for s in engine.store.started()
                  if s.idempotency_key and s.idempotency_key.startswith("schedule:"))


def test_four_workers_on_one_schedule_start_one_run_per_tick(
    store_url: str, procs: Any
) -> None:
    with Engine(Settings(database_url=store_url)) as engine:
        add_schedule(engine, schedwf.nightly, "* * * * *", {"region": "us"}, missed="all",
                     now=T0)
    tickers = [procs.spawn([sys.executable, str(TESTS_DIR / "schedwf.py"), store_url,
                            T0.isoformat(), "30"]) for _ in range(4)]
    with Engine(Settings(database_url=store_url)) as engine:
        wait_until(lambda: len(keys_started(engine)) >= 5, "the first ticks")
        assert procs.sigkill(tickers[0])  # a worker dies mid-way; the others go on
        for proc in tickers[1:]:
            assert procs.finish(proc) == 0, procs.output(proc)
        expected = sorted(tick_key("nightly", minutes(m)) for m in range(1, 31))
        assert keys_started(engine) == expected  # every tick once, none twice, none extra
        assert get_schedule(engine, "nightly").last_tick == minutes(30)
        run = engine.store.load(run_id_for_key("nightly", expected[0]))
        assert run.state.input == {"region": "us"}


@pytest.mark.parametrize(("missed", "now", "ticks"), [
    ("latest", minutes(30) + timedelta(seconds=5), [30]),
    ("all", minutes(30) + timedelta(seconds=5), [5, 10, 15, 20, 25, 30]),
    ("skip", minutes(30) + timedelta(seconds=5), [30]),
    ("skip", minutes(32), []),
])
def test_missed_ticks_follow_the_policy(engine: Engine, missed: str, now: datetime,
                                        ticks: list[int]) -> None:
    """No worker ran for half an hour: a schedule every 5 minutes has six ticks due."""
    add_schedule(engine, schedwf.nightly, "*/5 * * * *", missed=missed, now=T0)
    fire_due(engine, now=now)
    assert keys_started(engine) == sorted(tick_key("nightly", minutes(m)) for m in ticks)
    assert get_schedule(engine, "nightly").last_tick == minutes(30)  # the rest are gone
    fire_due(engine, now=now)  # again at the same moment: nothing more
    assert len(keys_started(engine)) == len(ticks)


def test_time_zones_pause_and_resume(engine: Engine) -> None:
    s = add_schedule(engine, schedwf.nightly, "0 2 * * *", name="paris-night",
                     timezone="Europe/Paris", now=datetime(2026, 7, 1, 12, tzinfo=UTC))
    assert s.next_tick() == datetime(2026, 7, 2, 0, tzinfo=UTC)  # 02:00 in Paris, summer
    s = add_schedule(engine, schedwf.nightly, "0 2 * * *", name="paris-night",
                     timezone="Europe/Paris", now=datetime(2026, 1, 1, 12, tzinfo=UTC))
    assert s.last_tick == datetime(2026, 7, 1, 12, tzinfo=UTC)  # a change keeps its last tick
    add_schedule(engine, schedwf.nightly, "* * * * *", now=T0)
    set_paused(engine, "nightly", True)
    set_paused(engine, "paris-night", True)
    assert fire_due(engine, now=minutes(10)) == []
    assert keys_started(engine) == []
    assert [s.name for s in list_schedules(engine) if s.paused] == ["nightly", "paris-night"]
    resumed = set_paused(engine, "nightly", False)
    assert resumed.last_tick > T0  # ticks missed while paused are not started
    with pytest.raises(ScheduleNotFoundError, match="no schedule named 'nope'"):
        set_paused(engine, "nope", True)


def test_a_decorated_workflow_declares_its_schedule(engine: Engine) -> None:
    (declared,) = declare_schedules(engine, [schedwf])
    assert (declared.name, declared.cron, declared.timezone, declared.missed) == (
        "hourly-paris", "0 * * * *", "Europe/Paris", "skip")
    set_paused(engine, "hourly-paris", True)
    declare_schedules(engine, [schedwf])  # a worker restarting keeps it paused
    assert get_schedule(engine, "hourly-paris").paused


def test_bad_schedules_are_refused(engine: Engine) -> None:
    for cron, tz, missed in [("61 * * * *", "UTC", "latest"), ("0 2 * * *", "Mars/Olympus",
                                                              "latest"),
                             ("0 2 * * *", "UTC", "sometimes"), ("every night", "UTC", "all")]:
        with pytest.raises(InvalidInputError):
            add_schedule(engine, schedwf.nightly, cron, missed=missed, timezone=tz)
    with pytest.raises(InvalidInputError):
        add_schedule(engine, schedwf.nightly, "0 2 * * *", {"nope": 1})
    assert list_schedules(engine) == []


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stepstone", *args], capture_output=True,
                          text=True, env=child_env(), timeout=120, check=False)


def test_the_command_line(store_url: str, tmp_path: Path) -> None:
    add = _cli("schedules", "add", "nightly", "schedwf:nightly", "--cron", "0 2 * * *",
               "--tz", "Europe/Paris", "--input", '{"region": "eu"}', "--db", store_url)
    assert add.returncode == 0, add.stderr
    assert "next tick" in add.stdout
    listed = _cli("schedules", "list", "--db", store_url)
    assert "nightly" in listed.stdout
    assert "Europe/Paris" in listed.stdout
    assert _cli("schedules", "pause", "nightly", "--db", store_url).returncode == 0
    assert "paused" in _cli("schedules", "list", "--db", store_url).stdout
    assert _cli("schedules", "resume", "nightly", "--db", store_url).returncode == 0
    bad = [
        (["add", "x", "schedwf:nightly", "--cron", "61 * * * *"], "is not a cron expression"),
        (["add", "x", "schedwf:nightly", "--cron", "0 2 * * *", "--tz", "Nowhere/City"],
         "not a known time zone"),
        (["add", "x", "schedwf:nightly", "--cron", "0 2 * * *", "--input", "{bad"],
         "--input is not JSON"),
        (["add", "x", "schedwf:nope", "--cron", "0 2 * * *"], "nope"),
        (["pause", "x"], "no schedule named 'x'"),
    ]
    for args, message in bad:
        r = _cli("schedules", *args, "--db", store_url)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1, (args, r.stderr)
        assert message in lines[0], (args, r.stderr)
    with Engine(Settings(database_url=store_url)) as engine:
        assert [s.name for s in list_schedules(engine)] == ["nightly"]


def test_a_worker_fires_the_ticks_and_drives_their_runs(store_url: str, procs: Any) -> None:
    """Real time, so the schedule ticks every second (croniter's sixth field is seconds)."""
    with Engine(Settings(database_url=store_url)) as engine:
        engine.schedule(schedwf.nightly, "* * * * * *", {"region": "ap"}, name="every-second")
        worker = procs.spawn([sys.executable, "-m", "stepstone", "worker", "--db", store_url,
                              "--import", "schedwf", "--poll", "0.1"])

        def completed() -> list[Any]:
            return [i for i in engine.runs() if i.status.is_terminal
                    and (i.idempotency_key or "").startswith("schedule:every-second:")]

        wait_until(lambda: len(completed()) >= 2, "two scheduled runs done by the worker")
        # The worker declared the schedule its --import module carries on its decorator.
        assert "hourly-paris" in [s.name for s in list_schedules(engine)]
        assert {i.output for i in completed()} == {"report for ap"}
        set_paused(engine, "every-second", True)
    worker.terminate()
    assert procs.finish(worker, timeout=60) == 0
