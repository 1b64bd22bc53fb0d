"""The API's reads: plain SQL over the views, and over the log for a run's events.

Table and tracking names come from the projections package, so the two cannot drift apart;
so do columns: each query selects, by name, the columns of a view's exported table spec that
its model needs, and builds the model from (name, value) pairs, never from positions, so a
view column renamed, added or moved cannot silently shift another into its place.

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
from eventsourcing.utils import get_topic

from api import models as m
from api.liveness import LeaseReads
from api.readonly_store import ReadOnlyStore, Row
from engine.children import parent_from_key
from engine.codec import OrjsonTranscoder, PydanticMapper
from engine.events import ChildStarted, RunEvent
from engine.results import HistoryEntry
from engine.status import RunStatus
from engine.storage import LogReader, StoredRow
from engine.store import RunStore
from projections import DEFAULT_PREFIX, VIEW_TABLES, VIEWS, Table


def columns_of(spec: Table, names: Sequence[str]) -> tuple[str, ...]:
    """`names`, checked to be columns of the view table `spec` (at import: a view that loses
    a column the API reads fails loudly on start, not with a wrong field on some request)."""
    missing = [n for n in names if n not in spec.column_names]
    if missing:
        raise RuntimeError(f"the {spec.name} view has no column {', '.join(missing)}")
    return tuple(names)


RUNS, ATTEMPTS, STATS, HOTSPOTS, PUBLISHED = (
    VIEW_TABLES[v] for v in ("runs", "step_attempts", "workflow_stats", "hotspots", "published")
)
# A `Run` is the runs view's columns of the same names, in the model's field order, and three
# fields made of other columns (`_RUN_SOURCES`); the query selects those as NULL placeholders,
# so that a row zips with the model's field names in one step (see `run_fields`).
_RUN_FIELDS = tuple(m.Run.model_fields)
_RUN_MADE = frozenset({"steps_expected", "progress", "last_error", "held_by", "last_seen_at"})
_RUN_SOURCES = columns_of(RUNS, ("progress_done", "progress_total", "last_error_type",
                                 "last_error_message", "last_error_step"))
RUN_COLUMNS = columns_of(RUNS, [f for f in _RUN_FIELDS if f not in _RUN_MADE])
_RUN_SELECT = ", ".join(
    [f"NULL AS {f}" if f in _RUN_MADE else f for f in _RUN_FIELDS] + list(_RUN_SOURCES)
)
ATTEMPT_COLUMNS = columns_of(ATTEMPTS, tuple(m.StepAttempt.model_fields))
STATS_COLUMNS = columns_of(STATS, tuple(m.WorkflowStats.model_fields))
HOTSPOT_COLUMNS = columns_of(
    HOTSPOTS, tuple(f for f in m.Hotspot.model_fields if f != "interruptions")
)
PUBLISHED_COLUMNS = columns_of(PUBLISHED, tuple(m.PublishedValue.model_fields))
_COMPLETED = RunStatus.COMPLETED.value
_CHILD_TOPIC = get_topic(ChildStarted)
_CHILDREN = 1000


def _select(names: Sequence[str]) -> str:
    return ", ".join(names)


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
        self.runs, self.attempts, self.stats, self.hotspots, self.published = (
            q(f"{DEFAULT_PREFIX}_{spec.name}")
            for spec in (RUNS, ATTEMPTS, STATS, HOTSPOTS, PUBLISHED)
        )
        self.log = LogReader(store.fetch, store.dialect)
        self.tracking = store.dialect.view_tracking_table
        self.uuid, self.ts = ("?", "?") if store.is_sqlite else ("?::uuid", "?::timestamptz")
        self.tracking_keys = {v: f"{DEFAULT_PREFIX}_{v}/{RunStore.name}" for v in VIEWS}
        self._expected: dict[tuple[str, int], tuple[float, int | None]] = {}
        self.liveness = LeaseReads(store, self.runs)

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
        which `get_run` validates against the `Run` model; the tests compare both.
        """
        where: list[str] = []
        params: list[Any] = []
        if status is not None:  # `running` and `interrupted` are judged by the leases, now
            clause, values = self.liveness.status_filter(status)
            where.append(clause)
            params += values
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
        rows = self._run_rows(
            f"{clause} ORDER BY started_at DESC, run_id DESC LIMIT ?", [*params, limit + 1]
        )
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = None
        if more and rows:
            last = rows[-1]
            next_cursor = _encode_cursor(_text(last["started_at"]), str(last["run_id"]))
        self.liveness.apply(rows)
        for run in rows:
            run["steps_expected"] = self.expected_steps(run)
        items = rows
        return orjson.dumps({"items": items, "next_cursor": next_cursor})

    def get_run(self, run_id: UUID) -> m.Run | None:
        rows = self._run_rows(f"WHERE run_id = {self.uuid}", [str(run_id)])
        return self._run(rows[0]) if rows else None

    def run_detail(self, run_id: UUID) -> m.RunDetail | None:
        """One run, with its parent and children read off its log: its first event, and its
        `ChildStarted` events (one run's rows; asked by the run route, not by every stream
        update, since a run of a million events takes a moment to look through)."""
        run = self.get_run(run_id)
        if run is None:
            return None
        first = self.log.run_events(run_id, limit=1)
        key = self._event(run_id, first[0]).fields.get("idempotency_key") if first else None
        started = self.log.run_events(run_id, limit=_CHILDREN, topics=[_CHILD_TOPIC])
        return m.RunDetail(
            **run.model_dump(), parent_run_id=parent_from_key(key),
            children=[self._event(run_id, r).fields["child_run_id"] for r in started],
        )

    def changed_runs(self, after: int, limit: int) -> list[m.Run]:
        """Runs whose last event is past position `after`, oldest change first."""
        rows = self._run_rows("WHERE last_position > ? ORDER BY last_position LIMIT ?",
                              [after, limit])
        return [self._run(r) for r in rows]

    def _run_rows(self, rest: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        """Runs of the runs view in the shape of `Run` (`run_fields`), steps expected unset."""
        rows = self.store.fetch(f"SELECT {_RUN_SELECT} FROM {self.runs} {rest}", params)
        return [run_fields(r) for r in rows]

    def interrupted_counts(self) -> dict[str, int]:
        return self.liveness.interrupted_counts()

    def _run(self, fields: dict[str, Any]) -> m.Run:
        self.liveness.apply([fields])
        fields["steps_expected"] = self.expected_steps(fields)
        return m.Run.model_validate(fields)

    def expected_steps(self, row: dict[str, Any]) -> int | None:
        """The yardstick for a run's progress: the steps of the latest completed run of its
        workflow version (its own if completed).

        Cached for a few seconds per workflow version: a page or a stream tick asks for the
        same few workflows over and over, and the answer changes only when a run completes.
        """
        if row["status"] == _COMPLETED:
            return int(row["steps_done"])
        key = (str(row["workflow"]), int(row["workflow_version"]))
        now = time.monotonic()
        cached = self._expected.get(key)
        if cached is not None and now - cached[0] < _EXPECTED_TTL_S:
            return cached[1]
        found = self.store.fetch(
            f"SELECT steps_done FROM {self.runs} WHERE workflow = ? AND status = ? "
            "AND workflow_version = ? ORDER BY finished_at DESC LIMIT 1",
            [key[0], _COMPLETED, key[1]],
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
            f"SELECT {_select(ATTEMPT_COLUMNS)} FROM {self.attempts} WHERE run_id = {self.uuid} "
            "ORDER BY started_at, step_key, attempt LIMIT ? OFFSET ?",
            [str(run_id), limit + 1, offset],
        )
        more = len(rows) > limit
        items = [m.StepAttempt(**dict(zip(ATTEMPT_COLUMNS, r, strict=True))) for r in rows[:limit]]
        return m.StepAttemptPage(
            run_id=run_id,
            items=items,
            next_cursor=_encode_cursor(offset + limit) if more else None,
        )

    def published_of(self, run_id: UUID, *, limit: int,
                     cursor: str | None) -> m.PublishedPage:
        """The run's latest published value of each key, by key; the cursor is an offset."""
        offset = int(_decode_cursor(cursor, 1)[0]) if cursor is not None else 0
        rows = self.store.fetch(
            f"SELECT {_select(PUBLISHED_COLUMNS)} FROM {self.published} "
            f"WHERE run_id = {self.uuid} ORDER BY key LIMIT ? OFFSET ?",
            [str(run_id), limit + 1, offset],
        )
        items = []
        for r in rows[:limit]:
            fields = dict(zip(PUBLISHED_COLUMNS, r, strict=True))
            fields["value"] = orjson.loads(fields["value"])  # kept as JSON text by the view
            items.append(m.PublishedValue(**fields))
        more = len(rows) > limit
        return m.PublishedPage(run_id=run_id, items=items,
                               next_cursor=_encode_cursor(offset + limit) if more else None)

    def events_of(self, run_id: UUID, *, limit: int, cursor: str | None,
                  before: int | None = None, topics: Sequence[str] = ()
                  ) -> m.EventPage | None:
        """The run's events from the log in order; None if the log has no such run.

        `before` (a version) pages backwards: the `limit` newest events before it, and `more`
        says whether older ones are left. `topics` keeps events of those types only.
        """
        if before is not None:
            rows = self.log.run_events_before(run_id, before, limit=limit + 1, topics=topics)
            if not rows and self.log.last_event(run_id) is None:
                return None
            items = [self._event(run_id, row) for row in rows[-limit:]]
            return m.EventPage(
                run_id=run_id, items=items, more=len(rows) > limit,
                next_cursor=_encode_cursor(items[-1].version) if items else None,
            )
        after_version = int(_decode_cursor(cursor, 1)[0]) if cursor is not None else 0
        rows = self.log.run_events(run_id, after_version=after_version, limit=limit + 1,
                                   topics=topics)
        if not rows and cursor is None and (not topics or self.log.last_event(run_id) is None):
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
        entry = HistoryEntry.of(int(position), event, summarize=False)
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
        rows = self.store.fetch(
            f"SELECT {_select(STATS_COLUMNS)} FROM {self.stats} ORDER BY workflow"
        )
        return [m.WorkflowStats(**dict(zip(STATS_COLUMNS, r, strict=True))) for r in rows]

    def hotspot_rows(self, *, workflow: str | None, limit: int) -> list[m.Hotspot]:
        where, params = ("WHERE workflow = ?", [workflow]) if workflow is not None else ("", [])
        rows = self.store.fetch(
            f"SELECT {_select(HOTSPOT_COLUMNS)} FROM {self.hotspots} {where} "
            "ORDER BY crashes + preemptions DESC, failures DESC, workflow, step_name LIMIT ?",
            [*params, limit],
        )
        out = []
        for r in rows:
            fields = dict(zip(HOTSPOT_COLUMNS, r, strict=True))
            out.append(m.Hotspot(**fields, interruptions=fields["crashes"] + fields["preemptions"]))
        return out

    def _ts_param(self, when: datetime) -> str:
        # SQLite keeps timestamps as the log's ISO text (orjson's format, UTC), which sorts.
        aware = when if when.tzinfo else when.replace(tzinfo=UTC)
        try:
            return orjson.dumps(aware.astimezone(UTC)).decode().strip('"')
        except (OverflowError, ValueError):
            raise InvalidQueryError(f"time {when.isoformat()} is out of range") from None


_EXPECTED_TTL_S = 5.0


def run_fields(row: Row) -> dict[str, Any]:
    """A row selected as `_RUN_SELECT`, in the shape of the API's `Run` (steps expected unset)
    as plain JSON-ready values, in the model's field order.

    One `dict(zip())` names the values, then the made fields replace their placeholders (which
    keeps their place): it runs for every row of a page, and naming each value in Python
    doubled the cost of a page.
    """
    run = dict(zip(_RUN_FIELDS, row, strict=False))  # the sources follow the fields
    done, total, error_type, message, step = row[len(_RUN_FIELDS):]
    if total is not None:
        run["progress"] = {"done": done, "total": total}
    if error_type is not None or message is not None:
        run["last_error"] = {"type": error_type, "message": message, "step": step}
    return run


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
