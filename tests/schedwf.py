"""A scheduled workflow, and (run as a script) a worker's tick loop over a simulated clock.

    python schedwf.py URL START_ISO MINUTES

calls `fire_due` once per simulated minute from START to START + MINUTES, as a worker does
every second, so several of these racing on one store show what many workers do to one
schedule; a test kills some with SIGKILL on the way.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime, timedelta

from engine import Engine, Settings, step, workflow
from engine.schedules import fire_due


@step
def report(region: str) -> str:
    return f"report for {region}"


@workflow("nightly")
def nightly(region: str = "eu") -> str:
    return report(region)


@workflow("hourly-paris", schedule="0 * * * *", schedule_tz="Europe/Paris",
          schedule_missed="skip")
def hourly(region: str = "fr") -> str:
    """Declared on the decorator: a worker that imports this module declares the schedule."""
    return report(region)


if __name__ == "__main__":
    url, start, minutes = sys.argv[1], datetime.fromisoformat(sys.argv[2]), int(sys.argv[3])
    with Engine(Settings(database_url=url, worker_id=f"ticker-{time.time_ns()}")) as engine:
        for minute in range(minutes + 1):
            fire_due(engine, now=start + timedelta(minutes=minute, seconds=1))
            time.sleep(0.01)
