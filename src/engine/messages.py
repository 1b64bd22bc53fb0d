"""Durable messages into a run: `engine.send(...)` from anywhere, `receive(topic)` in a body.

Why a table beside the log (DESIGN section 12): the run's own stream has one writer, the
process driving it; a sender writing there would race that writer's next append. So a message
is a row of `stepstone_messages`, durable when `send` returns and keyed by (run, message id),
so sending the same id again writes nothing. The run consumes a message by recording
`MessageReceived` (its id and payload) in its own log: the log, not the table, says what was
consumed, so however the run crashes and resumes each message is consumed exactly once, and
replay returns the recorded payload without reading the table again.

Waiting: `receive` that finds nothing records `MessageAwaited` (status `waiting`, with its
topic and timeout). Under a worker the run is then handed back without holding a thread, due at
its timeout (or at a periodic look, `RECHECK_S`); a send moves the run's row in the runnable
index to "due now", which wakes an idle worker. A send can land between the holder's last look
and its hand-back, which would push the row's due time back out; so the holder looks at the
inbox once more after handing the run back (`wake_if_delivered`), and one of the two always
sees the other. A local drive (`engine.run`, `stepstone run`) keeps the run and polls.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID

import orjson

from engine.context import current_runner
from engine.errors import EngineError, InvalidInputError, RunFinishedError
from engine.logcontext import get_logger
from engine.status import RunStatus, StepStatus

if TYPE_CHECKING:
    from engine.aggregate import WorkflowRun
    from engine.driver import RunDriver
    from engine.engine import Engine
    from engine.storage.index_db import Cursor
    from engine.workers.leases import LeaseStore

log = get_logger("stepstone.engine")

MAX_NAME_CHARS = 200
"""The longest topic or message id (a short name, not data: data goes in the payload)."""
MAX_PAYLOAD_BYTES = 256 * 1024
"""The largest payload, as JSON: a message says that something happened, it does not carry
the bulk data (put that where the step that needs it can read it, and send its address)."""
RECHECK_S = 300.0
"""A run waiting for a message under a worker is looked at this often even if nobody sends."""
POLL_S = 0.2
"""How often a local drive (no worker) looks at its inbox while it waits."""


class MessageConflictError(EngineError):
    """A message id was sent before with another topic or payload; nothing was written."""

    def __init__(self, run_id: UUID, message_id: str) -> None:
        self.run_id = run_id
        self.message_id = message_id
        super().__init__(
            f"message {message_id!r} was already sent to run {run_id} with another topic or "
            "payload; give a new message id for a new message"
        )


@dataclass(frozen=True)
class Message:
    message_id: str
    topic: str
    payload: Any
    sent_at: datetime


@dataclass(frozen=True)
class SendOutcome:
    """What `send` did: stored the message, or found the same message id sent before."""

    run_id: UUID
    message_id: str
    delivered: bool
    """False when this message id had been sent before: nothing was written."""
    status: RunStatus
    """The run's status when the message was stored (`waiting`: it wakes now)."""


def receive(topic: str, *, timeout: float | timedelta | None = None) -> Any:
    """Wait durably for the next message sent to this run on `topic`; return its payload.

    Messages are consumed in the order they were sent, each exactly once; one sent before the
    run asks for it is kept for it. Under a worker the run waits without holding a thread
    (status `waiting`). After `timeout` (seconds or a timedelta, recorded when the wait
    starts, so a restart keeps it) without a message, returns None. Replay returns the
    recorded payload (or None) without waiting again. Only inside a workflow run.
    """
    seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else timeout
    check_name(topic, "topic")
    runner: Any = current_runner.get()
    if runner is None or not hasattr(runner, "receive"):
        raise RuntimeError("receive() waits for messages sent to a workflow run; call it from "
                           "a workflow body")
    return runner.receive(topic, seconds)


def check_name(value: object, what: str) -> str:
    """A topic or message id: a non-empty string of at most `MAX_NAME_CHARS` characters."""
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_NAME_CHARS:
        raise InvalidInputError(
            f"a message {what} must be a non-empty string of at most {MAX_NAME_CHARS} "
            f"characters, not {str(value)[:40]!r}"
        )
    return value


def encode_payload(payload: Any) -> str:
    """The payload as JSON text, within `MAX_PAYLOAD_BYTES`; InvalidInputError otherwise."""
    try:
        data = orjson.dumps(payload)
    except TypeError as e:
        raise InvalidInputError(f"a message payload must be JSON: {e}") from e
    if len(data) > MAX_PAYLOAD_BYTES:
        raise InvalidInputError(
            f"the message payload is {len(data)} bytes as JSON, over the limit of "
            f"{MAX_PAYLOAD_BYTES}; send where the data is instead of the data"
        )
    return data.decode()


def send(engine: Engine, run_id: UUID, topic: str, payload: Any, *,
         message_id: str | None = None) -> SendOutcome:
    """Store a message for `run_id` and wake the run if it waits (see the module docstring).

    `RunNotFoundError` for an unknown run, `RunFinishedError` for a finished (completed,
    failed, cancelled, timed-out) one, `InvalidInputError` for a bad topic, id or payload,
    `MessageConflictError` for a known id with other content: nothing written in each case.
    """
    check_name(topic, "topic")
    mid = check_name(message_id, "id") if message_id is not None else uuid.uuid4().hex
    text = encode_payload(payload)
    run = engine.store.load(run_id)  # RunNotFoundError
    if run.status.is_terminal:
        raise RunFinishedError(run_id, run.status.value, "send a message to")
    leases = engine.leases
    row = {"id": str(run_id), "mid": mid, "topic": topic, "payload": text, "at": time.time()}

    def store(cur: Cursor) -> bool:
        cur.execute(leases.sql(
            "INSERT INTO {messages} (run_id, message_id, topic, payload, sent_at) VALUES "
            "(%(id)s, %(mid)s, %(topic)s, %(payload)s, %(at)s) "
            "ON CONFLICT (run_id, message_id) DO NOTHING"), row)
        if cur.rowcount == 1:
            return True
        cur.execute(leases.sql("SELECT topic, payload FROM {messages} WHERE run_id = %(id)s "
                               "AND message_id = %(mid)s"), row)
        (topic_was, payload_was), = _rows(cur)
        if topic_was != topic or orjson.loads(payload_was) != orjson.loads(text):
            raise MessageConflictError(run_id, mid)
        return False

    delivered = leases.call(store)
    if delivered:
        wake(leases, run_id)  # after the message is committed (the module docstring says why)
    return SendOutcome(run_id, mid, delivered, run.status)


def next_message(leases: LeaseStore, run_id: UUID, topic: str,
                 consumed: Collection[str]) -> Message | None:
    """The oldest message on `topic` for the run that its log has not consumed, if any."""
    done = set(consumed)

    def look(cur: Cursor) -> Message | None:
        cur.execute(leases.sql(
            "SELECT message_id, payload, sent_at FROM {messages} WHERE run_id = %(id)s "
            "AND topic = %(topic)s ORDER BY sent_at, message_id"),
            {"id": str(run_id), "topic": topic})
        for mid, payload, sent_at in _rows(cur):
            if mid not in done:
                return Message(str(mid), topic, orjson.loads(payload),
                               datetime.fromtimestamp(float(sent_at), UTC))
        return None

    return leases.call(look)


def wake(leases: LeaseStore, run_id: UUID) -> None:
    """Make a run handed back to wait due now (a held run is not disturbed: its lease is)."""
    now = time.time()

    def do(cur: Cursor) -> None:
        cur.execute(leases.sql(
            "UPDATE {queue} SET available_at = %(now)s WHERE run_id = %(id)s "
            "AND state = 'ready' AND available_at > %(now)s"), {"id": str(run_id), "now": now})
        if leases.channel:  # idle PostgreSQL workers LISTEN
            cur.execute(f"NOTIFY {leases.channel}")

    leases.call(do)


def wake_if_delivered(leases: LeaseStore, run: WorkflowRun) -> None:
    """After a waiting run was handed back: wake it now if a message came in meanwhile.

    Best effort, like the hand-back itself: if the store cannot be reached now, the run is
    looked at again at its timeout or after `RECHECK_S`."""
    topic = run.state.awaiting
    if run.status is not RunStatus.WAITING or topic is None:
        return
    try:
        if next_message(leases, run.id, topic, run.state.received) is not None:
            wake(leases, run.id)
    except EngineError as e:
        log.warning("run %s: could not look for messages after handing it back (it is "
                    "looked at again within %gs): %s", run.id, RECHECK_S, e)


def receive_in(driver: RunDriver, topic: str, timeout_s: float | None) -> Any:
    """`receive` for the run `driver` drives: replay, consume a message, or wait for one."""
    key, recorded = driver.next_position("receive")
    if recorded is not None and recorded.status is StepStatus.COMPLETED:
        return recorded.output
    inbox = driver.inbox
    if inbox is None:
        raise RuntimeError("this drive of the run has no inbox to receive messages from")
    run = driver.run
    if recorded is not None:
        timeout_at = recorded.wake_at  # as recorded when the wait started
    else:
        timeout_at = (None if timeout_s is None
                      else driver.clock() + timedelta(seconds=max(0.0, timeout_s)))
    awaited = recorded is not None
    while True:
        stop = driver.stop_pending(key)
        if stop is not None:
            raise stop
        message = next_message(inbox, run.id, topic, run.state.received)
        now = driver.clock()
        if message is not None or (timeout_at is not None and now >= timeout_at):
            # Held like a step's completion: committed with whatever the run does next. A
            # crash before that leaves the message unconsumed in the log, to be taken again.
            driver.record(run.receive_message, key, topic,
                          None if message is None else message.message_id,
                          None if message is None else message.payload,
                          None if message is None else message.sent_at)
            return None if message is None else message.payload
        if not awaited:
            driver.record(run.await_message, key, topic, timeout_at)
            driver.save()
            awaited = True
        left = float("inf") if timeout_at is None else (timeout_at - now).total_seconds()
        if driver.suspend_after_s is not None and left > driver.suspend_after_s:
            wait = min(left, max(RECHECK_S, driver.suspend_after_s + 1.0))
        else:
            wait = min(left, POLL_S)
        # Under a worker, a long wait raises Suspend: the run is handed back until then.
        driver.wait_until(now + timedelta(seconds=wait))


def _rows(cur: Cursor) -> list[tuple[Any, ...]]:
    return [tuple(r.values()) if isinstance(r, dict) else tuple(r) for r in cur.fetchall()]
