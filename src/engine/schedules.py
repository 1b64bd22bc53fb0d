"""Schedules: a workflow started on a cron schedule, one run per tick however many workers run.

A schedule is a row of `stepstone_schedules` beside the log: its cron expression (parsed by
`croniter`, never by hand) in a time zone, the workflow's input, the missed-tick policy, whether
it is paused, and `last_tick`, the newest tick already handled. Every worker calls `fire_due`
every few seconds. For each tick due since `last_tick`, per the policy, it starts the run with
the idempotency key `schedule:NAME:TICK` (DESIGN section 12): any number of workers racing on
one tick start one run, because the existing key rule returns the run already started. Only
then does it move `last_tick` forward, with a compare-and-set on the value it read: a worker
that dies between the two leaves the tick to the next one, which starts the same run again
(a no-op). So no tick gets two runs, and none is lost to a crash.

Missed ticks (no worker ran for a while): `latest` (the default) starts one run for the newest
due tick and skips the older ones; `all` starts one per tick, oldest first, at most
`MAX_CATCH_UP` per call; `skip` starts the newest only if it is less than `SKIP_GRACE_S` late
and otherwise waits for the next tick. A new schedule starts with its first tick after it was
made (no back-fill).
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import ModuleType
from typing import TYPE_CHECKING, Any
from uuid import UUID
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
from croniter import CroniterError, croniter

from engine.definitions import Workflow
from engine.errors import EngineError, InvalidInputError
from engine.identity import load_workflow
from engine.logcontext import get_logger
from engine.messages import check_name
from engine.storage import SCHEMA_LOCK_KEY

if TYPE_CHECKING:
    from engine.engine import Engine
    from engine.storage.index_db import Cursor
    from engine.workers.leases import LeaseStore

log = get_logger("stepstone.engine")

MISSED_POLICIES = ("latest", "all", "skip")
MAX_CATCH_UP = 100
"""Under `all`, the most ticks one call starts; the rest come on the next calls."""
SKIP_GRACE_S = 60.0
"""Under `skip`, how late a tick may be and still start."""

_DDL = ("CREATE TABLE IF NOT EXISTS {schedules} (name TEXT PRIMARY KEY, workflow TEXT NOT NULL, "
        "entrypoint TEXT NOT NULL, cron TEXT NOT NULL, timezone TEXT NOT NULL, "
        "input TEXT NOT NULL, missed TEXT NOT NULL, paused INTEGER NOT NULL DEFAULT 0, "
        "last_tick DOUBLE PRECISION NOT NULL, created_at DOUBLE PRECISION NOT NULL)")
_COLUMNS = "name, workflow, entrypoint, cron, timezone, input, missed, paused, last_tick"


class ScheduleNotFoundError(EngineError):
    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"no schedule named {name!r}; `stepstone schedules list` lists them")


@dataclass(frozen=True)
class Schedule:
    name: str
    workflow: str
    entrypoint: str
    cron: str
    timezone: str
    input: dict[str, Any]
    missed: str
    paused: bool
    last_tick: datetime
    """The newest tick handled (or when the schedule was made, before its first tick)."""

    def next_tick(self, after: datetime | None = None) -> datetime:
        return ticks_after(self.cron, self.timezone, after or self.last_tick, 1)[0]


def check_cron(cron: str, timezone: str) -> ZoneInfo:
    """The time zone, once `cron` and `timezone` are known good; InvalidInputError if not."""
    if not isinstance(cron, str) or not croniter.is_valid(cron):
        raise InvalidInputError(f"{cron!r} is not a cron expression croniter can read; write "
                                "five fields like '0 2 * * *' (02:00 every day)")
    try:
        return ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise InvalidInputError(f"{timezone!r} is not a known time zone; use an IANA name "
                                "like 'UTC' or 'Europe/Paris'") from e


def ticks_after(cron: str, timezone: str, after: datetime, limit: int,
                until: datetime | None = None) -> list[datetime]:
    """Up to `limit` ticks of `cron` in `timezone` strictly after `after` (and at or before
    `until`, when given), as UTC instants."""
    zone = check_cron(cron, timezone)
    try:
        it = croniter(cron, after.astimezone(zone))
        out: list[datetime] = []
        while len(out) < limit:
            tick = it.get_next(datetime).astimezone(UTC)
            if until is not None and tick > until:
                break
            out.append(tick)
    except CroniterError as e:  # an expression that never matches (30 February)
        raise InvalidInputError(f"cron {cron!r}: {e}") from e
    return out


def tick_key(name: str, tick: datetime) -> str:
    """The idempotency key of a tick's run: the schedule and the tick, to the second (UTC)."""
    return f"schedule:{name}:{tick.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}"


def add_schedule(engine: Engine, workflow: Workflow[..., Any], cron: str,
                 input: Mapping[str, Any] | None = None, *, name: str | None = None,
                 timezone: str = "UTC", missed: str = "latest",
                 now: datetime | None = None) -> Schedule:
    """Create or change a schedule (see the module docstring); a change keeps its paused
    state and its last tick. InvalidInputError for a bad cron, zone, policy or input."""
    check_cron(cron, timezone)
    name = check_name(name or workflow.name, "schedule name")
    if missed not in MISSED_POLICIES:
        raise InvalidInputError(f"missed-tick policy {missed!r} is not one of "
                                f"{', '.join(MISSED_POLICIES)}")
    recorded = workflow.normalize_input(input)  # InvalidInputError if it does not fit
    at = (now or datetime.now(UTC)).timestamp()
    leases = _table(engine)
    row = {"name": name, "wf": workflow.name, "ep": workflow.entrypoint, "cron": cron,
           "tz": timezone, "input": orjson.dumps(recorded).decode(), "missed": missed,
           "at": at}
    leases.call(lambda cur: cur.execute(leases.sql(
        "INSERT INTO {schedules} (name, workflow, entrypoint, cron, timezone, input, missed, "
        "paused, last_tick, created_at) VALUES (%(name)s, %(wf)s, %(ep)s, %(cron)s, %(tz)s, "
        "%(input)s, %(missed)s, 0, %(at)s, %(at)s) ON CONFLICT (name) DO UPDATE SET "
        "workflow = excluded.workflow, entrypoint = excluded.entrypoint, cron = excluded.cron, "
        "timezone = excluded.timezone, input = excluded.input, missed = excluded.missed"), row))
    return get_schedule(engine, name)


def declare_schedules(engine: Engine, modules: Iterable[ModuleType]) -> list[Schedule]:
    """Create or update the schedules of the `@workflow(schedule=...)` workflows in
    `modules` (a worker calls this for its `--import`s), named after their workflows."""
    declared = []
    for module in modules:
        for value in vars(module).values():
            if isinstance(value, Workflow) and value.schedule is not None:
                declared.append(add_schedule(
                    engine, value, value.schedule, {}, timezone=value.schedule_tz,
                    missed=value.schedule_missed))
    return declared


def list_schedules(engine: Engine) -> list[Schedule]:
    leases = _table(engine)

    def read(cur: Cursor) -> list[Schedule]:
        cur.execute(leases.sql(f"SELECT {_COLUMNS} FROM {{schedules}} ORDER BY name"))
        return [_schedule(r) for r in _rows(cur)]

    return leases.call(read)


def get_schedule(engine: Engine, name: str) -> Schedule:
    found = [s for s in list_schedules(engine) if s.name == name]
    if not found:
        raise ScheduleNotFoundError(name)
    return found[0]


def set_paused(engine: Engine, name: str, paused: bool) -> Schedule:
    """Pause or resume a schedule. Resuming does not start the ticks missed while paused:
    the schedule goes on from now (its missed-tick policy is for workers that were down)."""
    leases = _table(engine)
    now = time.time()

    def do(cur: Cursor) -> int:
        cur.execute(leases.sql(
            "UPDATE {schedules} SET paused = %(p)s, last_tick = CASE WHEN %(p)s = 0 AND "
            "paused = 1 THEN %(now)s ELSE last_tick END WHERE name = %(name)s"),
            {"p": int(paused), "now": now, "name": name})
        return cur.rowcount

    if leases.call(do) != 1:
        raise ScheduleNotFoundError(name)
    return get_schedule(engine, name)


def fire_due(engine: Engine, *, now: datetime | None = None) -> list[UUID]:
    """Start the runs of every tick due by `now` (default: this moment), per each schedule's
    policy; the runs started (or found started by another worker). Safe to call from any
    number of workers at once."""
    at = now or datetime.now(UTC)
    started: list[UUID] = []
    for s in list_schedules(engine):
        if s.paused:
            continue
        try:
            started.extend(_fire(engine, s, at))
        except EngineError as e:  # one broken schedule must not stop the others
            log.warning("schedule %s: %s", s.name, e)
    return started


def _fire(engine: Engine, s: Schedule, now: datetime) -> list[UUID]:
    due = ticks_after(s.cron, s.timezone, s.last_tick, MAX_CATCH_UP + 1, until=now)
    if not due:
        return []
    if s.missed == "all":
        chosen = due[:MAX_CATCH_UP]
    elif s.missed == "skip":
        late = (now - due[-1]).total_seconds()
        chosen = [due[-1]] if late <= SKIP_GRACE_S else []
    else:
        chosen = [due[-1]]
    handled = chosen[-1] if s.missed == "all" else due[-1]
    workflow = load_workflow(s.entrypoint)
    # Start first, then move last_tick: a crash in between leaves the tick to the next caller,
    # whose start with the same key returns this run.
    runs = [engine.start(workflow, s.input, key=tick_key(s.name, tick)) for tick in chosen]
    leases = _table(engine)
    leases.call(lambda cur: cur.execute(leases.sql(
        "UPDATE {schedules} SET last_tick = %(new)s WHERE name = %(name)s "
        "AND last_tick = %(old)s"),
        {"new": handled.timestamp(), "old": s.last_tick.timestamp(), "name": s.name}))
    skipped = len(due) - len(chosen)
    if skipped and s.missed != "all":
        log.info("schedule %s: %d missed tick(s) skipped (policy %s)", s.name, skipped, s.missed)
    return runs


_CREATED: weakref.WeakSet[LeaseStore] = weakref.WeakSet()


def _table(engine: Engine) -> LeaseStore:
    """The engine's index connection, with the schedules table made on its first use (the
    runnable index's own tables are made by `LeaseStore`)."""
    leases = engine.leases
    if leases not in _CREATED:

        def create(cur: Cursor) -> None:
            if leases.location.kind == "postgres":  # processes starting together: one at a time
                cur.execute("SELECT pg_advisory_xact_lock(%(k)s)", {"k": SCHEMA_LOCK_KEY})
            cur.execute(leases.sql(_DDL))

        leases.call(create)
        _CREATED.add(leases)
    return leases


def _schedule(row: tuple[Any, ...]) -> Schedule:
    name, wf, ep, cron, tz, data, missed, paused, last = row
    return Schedule(str(name), str(wf), str(ep), str(cron), str(tz), orjson.loads(data),
                    str(missed), bool(paused), datetime.fromtimestamp(float(last), UTC))


def _rows(cur: Cursor) -> list[tuple[Any, ...]]:
    return [tuple(r.values()) if isinstance(r, dict) else tuple(r) for r in cur.fetchall()]

