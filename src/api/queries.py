"""The API's reads: plain SQL over the views, and over the log for a run's events.

Table and tracking names come from the projections package, so the two cannot drift apart.
Lists page with keyset cursors (the last row's sort key, opaque to clients), so a page costs
the same however deep it is.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar
from uuid import UUID

import anyio
import orjson
from anyio import to_thread
from eventsourcing.persistence import StoredEvent

from api import models as m
from api.readonly_store import ReadOnlyStore, Row
from engine.codec import OrjsonTranscoder, PydanticMapper
from engine.events import RunEvent
from engine.results import HistoryEntry
from engine.storage import LogReader, StoredRow
from engine.store import RunStore
from projections import VIEWS
from projections.projector import DEFAULT_PREFIX

RUN_COLUMNS = (
    "run_id, workflow, workflow_version, status, current_step, current_step_status, "
    "steps_done, steps_started, progress_done, progress_total, attempts, retries, preemptions, "
    "crashes, interruptions, worker, started_at, updated_at, finished_at, last_error_type, "
    "last_error_message, last_error_step, last_position"
)
ATTEMPT_COLUMNS = (
    "step_key, step_name, attempt, worker, started_at, ended_at, outcome, duration_s, "
    "error_type, error_message"
)
STATS_COLUMNS = (
    "workflow, runs, pending, running, preempted, waiting, parked, completed, failed, cancelled, "
    "duration_p50_s, duration_p95_s"
)
HOTSPOT_COLUMNS = "workflow, step_name, attempts, retries, failures, preemptions, crashes"


class InvalidQueryError(ValueError):
    """A query parameter that parses but cannot be used (a time out of range)."""


class InvalidCursorError(InvalidQueryError):
    """A cursor that this API did not hand out (or that was changed on the way)."""


T = TypeVar("T")


class Reads:
    """Every query the routes make, on one read-only store."""

    def __init__(self, store: ReadOnlyStore, *, threads: int = 4) -> None:
        self.store = store
        self.threads = threads
        self._limiter: anyio.CapacityLimiter | None = None
        self.mapper = PydanticMapper(transcoder=OrjsonTranscoder())
        q = store.qualify
        self.runs = q(f"{DEFAULT_PREFIX}_runs")
        self.attempts = q(f"{DEFAULT_PREFIX}_step_attempts")
        self.stats = q(f"{DEFAULT_PREFIX}_workflow_stats")
        self.hotspots = q(f"{DEFAULT_PREFIX}_hotspots")
        self.log = LogReader(store.fetch, store.dialect)
        self.tracking = store.dialect.view_tracking_table
        self.uuid, self.ts = ("?", "?") if store.is_sqlite else ("?::uuid", "?::timestamptz")
        self.tracking_keys = {v: f"{DEFAULT_PREFIX}_{v}/{RunStore.name}" for v in VIEWS}
        self._expected: dict[tuple[str, int], tuple[float, int | None]] = {}

    async def off_loop(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking read in a worker thread, at most `threads` at a time.

        Off the event loop, so a stalled database never stalls it (/healthz keeps answering);
        one thread hop per request. Few threads rather than anyio's default 40: each holds a
        SQLite connection with its own page cache, and more threads than cores only fight
        over the GIL (measured: 40 threads gave a third of the throughput of 4).
        """
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.threads)
        return await to_thread.run_sync(lambda: fn(*args, **kwargs), limiter=self._limiter)

    # -- positions -------------------------------------------------------------------------
    def head(self) -> int:
        return self.log.head()

    def positions(self) -> dict[str, int]:
        """Each view's tracking position (0 if it never ran)."""
        keys = list(self.tracking_keys.values())
        marks = ", ".join("?" * len(keys))
        rows = self.store.fetch(
            f"SELECT application_name, notification_id FROM {self.tracking} "
            f"WHERE application_name IN ({marks})",
            keys,
        )
        found: dict[str, Any] = {str(k): v for k, v in rows}
        return {view: int(found.get(key) or 0) for view, key in self.tracking_keys.items()}

    # -- runs ------------------------------------------------------------------------------
    def list_runs(
        self,
        *,
        limit: int,
        cursor: str | None = None,
        status: str | None = None,
        workflow: str | None = None,
        started_after: datetime | None = None,
        started_before: datetime | None = None,
    ) -> bytes:
        """A page of runs, newest first by (started_at, run_id), as `RunPage` JSON.

        JSON straight from the rows (orjson), not through pydantic models: building and
        dumping fifty models cost more than the query itself. The shape is `run_fields`,
        which `run_of` validates against the `Run` model; the tests compare both.
        """
        where: list[str] = []
        params: list[Any] = []
        if status is not None:
            where.append("status = ?")
            params.append(status)
        if workflow is not None:
            where.append("workflow = ?")
            params.append(workflow)
        if started_after is not None:
            where.append(f"started_at >= {self.ts}")
            params.append(self._ts_param(started_after))
        if started_before is not None:
            where.append(f"started_at < {self.ts}")
            params.append(self._ts_param(started_before))
        if cursor is not None:
            started, run_id = _decode_cursor(cursor, 2)
            where.append(f"(started_at, run_id) < ({self.ts}, {self.uuid})")
            params += [str(started), str(_uuid(run_id))]
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self.store.fetch(
            f"SELECT {RUN_COLUMNS} FROM {self.runs} {clause} "
            "ORDER BY started_at DESC, run_id DESC LIMIT ?",
            [*params, limit + 1],
        )
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = None
        if more and rows:
            last = rows[-1]
            next_cursor = _encode_cursor(_text(last[16]), str(last[0]))
        items = [run_fields(r, self.expected_steps(r)) for r in rows]
        return orjson.dumps({"items": items, "next_cursor": next_cursor})

    def get_run(self, run_id: UUID) -> m.Run | None:
        rows = self.store.fetch(
            f"SELECT {RUN_COLUMNS} FROM {self.runs} WHERE run_id = {self.uuid}", [str(run_id)]
        )
        return run_of(rows[0], self.expected_steps(rows[0])) if rows else None

    def changed_runs(self, after: int, limit: int) -> list[m.Run]:
        """Runs whose last event is past position `after`, oldest change first."""
        rows = self.store.fetch(
            f"SELECT {RUN_COLUMNS} FROM {self.runs} WHERE last_position > ? "
            "ORDER BY last_position LIMIT ?",
            [after, limit],
        )
        return [run_of(r, self.expected_steps(r)) for r in rows]

    def expected_steps(self, row: Row) -> int | None:
        """The yardstick for a run's progress: the steps of the latest completed run of its
        workflow version (its own if completed).

        Cached for a few seconds per workflow version: a page or a stream tick asks for the
        same few workflows over and over, and the answer changes only when a run completes.
        """
        if row[3] == "completed":
            return int(row[6])
        key = (str(row[1]), int(row[2]))
        now = time.monotonic()
        cached = self._expected.get(key)
        if cached is not None and now - cached[0] < _EXPECTED_TTL_S:
            return cached[1]
        found = self.store.fetch(
            f"SELECT steps_done FROM {self.runs} WHERE workflow = ? AND status = 'completed' "
            "AND workflow_version = ? ORDER BY finished_at DESC LIMIT 1",
            [key[0], key[1]],
        )
        steps = int(found[0][0]) if found else None
        self._expected[key] = (now, steps)
        return steps

    # -- a run's steps and events ----------------------------------------------------------
    def attempts_of(self, run_id: UUID, *, limit: int, cursor: str | None) -> m.StepAttemptPage:
        """In the order the attempts started; the cursor is an offset within the run."""
        offset = int(_decode_cursor(cursor, 1)[0]) if cursor is not None else 0
        if offset < 0:
            raise InvalidCursorError("negative offset")
        rows = self.store.fetch(
            f"SELECT {ATTEMPT_COLUMNS} FROM {self.attempts} WHERE run_id = {self.uuid} "
            "ORDER BY started_at, step_key, attempt LIMIT ? OFFSET ?",
            [str(run_id), limit + 1, offset],
        )
        more = len(rows) > limit
        items = [m.StepAttempt(**dict(zip(_ATTEMPT_FIELDS, r, strict=True))) for r in rows[:limit]]
        return m.StepAttemptPage(
            run_id=run_id,
            items=items,
            next_cursor=_encode_cursor(offset + limit) if more else None,
        )

    def events_of(self, run_id: UUID, *, limit: int, cursor: str | None) -> m.EventPage | None:
        """The run's events from the log in order; None if the log has no such run."""
        after_version = int(_decode_cursor(cursor, 1)[0]) if cursor is not None else 0
        rows = self.log.run_events(run_id, after_version=after_version, limit=limit + 1)
        if not rows and cursor is None:
            return None
        items = [self._event(run_id, row) for row in rows[:limit]]
        # A log grows: the cursor after the last event lets a client tail it.
        return m.EventPage(
            run_id=run_id,
            items=items,
            next_cursor=_encode_cursor(items[-1].version) if items else cursor,
            more=len(rows) > limit,
        )

    def _event(self, run_id: UUID, row: StoredRow) -> m.Event:
        position, _, version, topic, state = row
        stored = StoredEvent(
            originator_id=run_id, originator_version=version, topic=topic, state=state
        )
        event: RunEvent = self.mapper.to_domain_event(stored)
        entry = HistoryEntry.of(int(position), event)
        return m.Event(
            position=entry.position,
            version=entry.version,
            timestamp=entry.timestamp,
            event_type=entry.event_type,
            worker_id=entry.worker_id,
            fields=entry.fields,
        )

    # -- statistics --------------------------------------------------------------------------
    def workflow_stats(self) -> list[m.WorkflowStats]:
        rows = self.store.fetch(f"SELECT {STATS_COLUMNS} FROM {self.stats} ORDER BY workflow")
        names = [c.strip() for c in STATS_COLUMNS.split(",")]
        return [m.WorkflowStats(**dict(zip(names, r, strict=True))) for r in rows]

    def hotspot_rows(self, *, workflow: str | None, limit: int) -> list[m.Hotspot]:
        where, params = ("WHERE workflow = ?", [workflow]) if workflow is not None else ("", [])
        rows = self.store.fetch(
            f"SELECT {HOTSPOT_COLUMNS} FROM {self.hotspots} {where} "
            "ORDER BY crashes + preemptions DESC, failures DESC, workflow, step_name LIMIT ?",
            [*params, limit],
        )
        names = [c.strip() for c in HOTSPOT_COLUMNS.split(",")]
        out = []
        for r in rows:
            fields = dict(zip(names, r, strict=True))
            out.append(m.Hotspot(**fields, interruptions=fields["crashes"] + fields["preemptions"]))
        return out

    def _ts_param(self, when: datetime) -> str:
        # SQLite keeps timestamps as the log's ISO text (orjson's format, UTC), which sorts.
        aware = when if when.tzinfo else when.replace(tzinfo=UTC)
        try:
            return orjson.dumps(aware.astimezone(UTC)).decode().strip('"')
        except (OverflowError, ValueError):
            raise InvalidQueryError(f"time {when.isoformat()} is out of range") from None


_ATTEMPT_FIELDS = tuple(c.strip() for c in ATTEMPT_COLUMNS.split(","))
_EXPECTED_TTL_S = 5.0


def run_fields(r: Row, expected: int | None = None) -> dict[str, Any]:
    """A runs-view row in the shape of the API's `Run`, as plain JSON-ready values."""
    progress = {"done": r[8], "total": r[9]} if r[9] is not None else None
    error = (
        {"type": r[19], "message": r[20], "step": r[21]}
        if r[19] is not None or r[20] is not None
        else None
    )
    return {
        "run_id": r[0], "workflow": r[1], "workflow_version": r[2], "status": r[3],
        "current_step": r[4], "current_step_status": r[5], "steps_done": r[6],
        "steps_started": r[7], "steps_expected": expected, "progress": progress,
        "attempts": r[10], "retries": r[11],
        "preemptions": r[12], "crashes": r[13], "interruptions": r[14], "worker": r[15],
        "started_at": r[16], "updated_at": r[17], "finished_at": r[18], "last_error": error,
        "last_position": r[22],
    }


def run_of(r: Row, expected: int | None = None) -> m.Run:
    return m.Run.model_validate(run_fields(r, expected))


def _text(value: Any) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)


def _encode_cursor(*parts: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(list(parts))).decode().rstrip("=")


def _decode_cursor(cursor: str, size: int) -> Sequence[Any]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        parts = orjson.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (ValueError, UnicodeError) as e:
        raise InvalidCursorError(str(e)) from None
    if not isinstance(parts, list) or len(parts) != size:
        raise InvalidCursorError("wrong shape")
    for part in parts:
        if isinstance(part, bool) or not isinstance(part, int | str):
            raise InvalidCursorError("wrong shape")
        if isinstance(part, int) and not 0 <= part < 2**62:
            raise InvalidCursorError("out of range")
    if size == 1 and not isinstance(parts[0], int):
        raise InvalidCursorError("wrong shape")
    if size == 2:
        try:
            datetime.fromisoformat(str(parts[0]))
        except ValueError:
            raise InvalidCursorError("bad time") from None
    return parts


def _uuid(text: Any) -> UUID:
    try:
        return UUID(str(text))
    except ValueError:
        raise InvalidCursorError("bad run id") from None
