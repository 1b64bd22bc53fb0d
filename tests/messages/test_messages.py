"""Durable messages in process, on both stores: sent before the wait or during it, duplicate
ids, timeouts, replay from the log, waking a run a worker handed back, and every refusal."""

from __future__ import annotations

import time
from typing import Any
from uuid import UUID, uuid4

import pytest

import msgwf
from engine import (
    Engine,
    InvalidInputError,
    MessageConflictError,
    RunFinishedError,
    RunNotFoundError,
    RunStatus,
    receive,
)
from engine.events import MessageAwaited, MessageReceived, ResumeReason, RunResumed
from engine.messages import MAX_PAYLOAD_BYTES, RECHECK_S, wake_if_delivered
from support import call_when


def kinds(engine: Engine, run_id: UUID) -> list[type[Any]]:
    return [e.kind for e in engine.history(run_id)]


def stored_messages(engine: Engine) -> int:
    def count(cur: Any) -> int:
        cur.execute(engine.leases.sql("SELECT count(*) FROM {messages}"))
        (row,) = cur.fetchall()
        return int(next(iter(row.values())) if isinstance(row, dict) else row[0])

    return engine.leases.call(count)


def drive_as_worker(engine: Engine, run_id: UUID) -> Any:
    """One drive the way a worker does it: claim, then suspend on any wait over 1 s."""
    assert engine.leases.claim_run(run_id, engine.settings.worker_id, 30,
                                   workflow="x", queue="default") is None
    return engine.drive_claimed(run_id, since=time.monotonic(), suspend_after_s=1.0)


def test_a_message_sent_before_the_wait_is_kept_for_it(engine: Engine) -> None:
    run_id = engine.start(msgwf.approval, {"table": "orders"})
    sent = engine.send(run_id, "approval", {"by": "ana"}, message_id="m-1")
    assert sent.delivered
    assert sent.status is RunStatus.PENDING
    result = engine.resume(run_id)
    assert result.status is RunStatus.COMPLETED
    assert result.output["approved"] == {"by": "ana"}
    history = engine.history(run_id)
    received = [e for e in history if e.kind is MessageReceived]
    assert [e.fields["message_id"] for e in received] == ["m-1"]
    assert MessageAwaited not in kinds(engine, run_id)  # it never had to wait


def test_duplicate_ids_deliver_once_and_messages_keep_their_order(engine: Engine) -> None:
    run_id = engine.start(msgwf.two_messages, {"timeout_s": 0.2})
    assert engine.send(run_id, "a", 1, message_id="first").delivered
    assert not engine.send(run_id, "a", 1, message_id="first").delivered  # a resend
    with pytest.raises(MessageConflictError, match="another topic or payload"):
        engine.send(run_id, "a", 2, message_id="first")
    assert engine.send(run_id, "b", "bee", message_id="third").delivered
    # The first "a" receive takes "first"; the second finds nothing new and times out.
    assert engine.resume(run_id).output == [1, None, "bee"]
    assert engine.store.load(run_id).state.received == ["first", "third"]
    assert stored_messages(engine) == 2


def test_a_receive_times_out_with_none_and_records_both_ends(engine: Engine) -> None:
    result = engine.run(msgwf.approval, {"table": "t", "timeout_s": 0.3})
    assert result.output["result"] == "timed out"
    history = engine.history(result.run_id)
    awaited = next(e for e in history if e.kind is MessageAwaited)
    assert awaited.fields["topic"] == "approval"
    assert awaited.fields["timeout_at"] is not None
    received = next(e for e in history if e.kind is MessageReceived)
    assert received.fields["message_id"] is None
    assert received.summary == "no message on 'approval' before the timeout"


def test_a_local_drive_waits_for_a_message_sent_meanwhile(engine: Engine) -> None:
    run_id = engine.start(msgwf.approval, {"table": "orders"})
    sender = call_when(lambda: engine.status(run_id).status is RunStatus.WAITING,
                       lambda: engine.send(run_id, "approval", "yes"))
    result = engine.resume(run_id)
    sender.join()
    assert result.output == {"plan": {"table": "orders", "rows": 6000}, "approved": "yes",
                             "result": "orders: yes"}


def test_a_worker_hands_a_waiting_run_back_and_a_send_wakes_it(engine: Engine) -> None:
    run_id = engine.start(msgwf.approval, {"table": "orders"})
    waiting = drive_as_worker(engine, run_id)
    assert waiting.status is RunStatus.WAITING
    info = engine.status(run_id)
    assert (info.status, info.waiting_for, info.held_by) == (RunStatus.WAITING, "approval", None)
    row = engine.leases.row(run_id)
    assert row is not None
    assert row.lease_owner is None
    assert row.available_at > time.time() + RECHECK_S / 2  # not due: it waits for a message
    engine.send(run_id, "approval", "go")
    row = engine.leases.row(run_id)
    assert row is not None
    assert row.available_at <= time.time()
    assert drive_as_worker(engine, run_id).status is RunStatus.COMPLETED
    resumed = [e for e in engine.history(run_id) if e.kind is RunResumed]
    assert resumed[-1].fields["reason"] == ResumeReason.MESSAGE_WAIT.value


def test_a_message_that_lands_while_the_run_is_held_still_wakes_it(engine: Engine) -> None:
    """The holder looked, found nothing, and the send's wake-up was overwritten when it handed
    the run back: its look after the hand-back sees the message."""
    run_id = engine.start(msgwf.approval, {"table": "orders"})
    drive_as_worker(engine, run_id)
    engine.leases.call(lambda cur: cur.execute(engine.leases.sql(
        "INSERT INTO {messages} (run_id, message_id, topic, payload, sent_at) "
        "VALUES (%(id)s, 'raced', 'approval', '\"ok\"', %(at)s)"),
        {"id": str(run_id), "at": time.time()}))
    row = engine.leases.row(run_id)
    assert row is not None
    assert row.available_at > time.time()
    wake_if_delivered(engine.leases, engine.store.load(run_id))
    row = engine.leases.row(run_id)
    assert row is not None
    assert row.available_at <= time.time()


def test_replay_returns_the_recorded_payload_without_the_inbox(engine: Engine) -> None:
    run_id = engine.start(msgwf.receive_then_sleep, {"seconds": 1.2})
    engine.send(run_id, "go", {"n": 1})
    assert drive_as_worker(engine, run_id).status is RunStatus.WAITING  # asleep, handed back
    engine.leases.call(lambda cur: cur.execute(engine.leases.sql("DELETE FROM {messages}")))
    engine.send(run_id, "go", {"n": 2})  # a later message must not replace the consumed one
    result = engine.resume(run_id)  # replays the receive, then waits out the rest of the sleep
    assert result.status is RunStatus.COMPLETED
    assert result.output == {"n": 1}
    assert [e.fields["message_id"] for e in engine.history(run_id)
            if e.kind is MessageReceived] == [engine.store.load(run_id).state.received[0]]


def test_a_waiting_run_is_cancelled_at_once(engine: Engine) -> None:
    run_id = engine.start(msgwf.approval, {"table": "orders"})
    drive_as_worker(engine, run_id)
    outcome = engine.cancel(run_id, reason="not approved in time")
    assert outcome.status is RunStatus.CANCELLED
    with pytest.raises(RunFinishedError, match="is already cancelled"):
        engine.send(run_id, "approval", "too late")


def test_sends_to_finished_or_unknown_runs_and_bad_input_write_nothing(engine: Engine) -> None:
    done = engine.run(msgwf.approval, {"table": "t", "timeout_s": 0.0}).run_id
    with pytest.raises(RunFinishedError, match="is already completed; there is nothing to send"):
        engine.send(done, "approval", "late")
    with pytest.raises(RunNotFoundError):
        engine.send(uuid4(), "approval", "nobody")
    live = engine.start(msgwf.approval, {"table": "t"})
    bad: list[tuple[str, Any, str | None]] = [
        ("", 1, None), ("t" * 201, 1, None), ("approval", {1, 2}, None),
        ("approval", "x" * (MAX_PAYLOAD_BYTES + 1), None), ("approval", 1, " "),
    ]
    for topic, payload, mid in bad:
        with pytest.raises(InvalidInputError):
            engine.send(live, topic, payload, message_id=mid)
    assert stored_messages(engine) == 0


def test_receive_outside_a_run_says_where_it_belongs() -> None:
    with pytest.raises(RuntimeError, match="call it from a workflow body"):
        receive("approval")


def test_the_deploy_check_replays_a_run_waiting_for_a_message(engine: Engine) -> None:
    from engine.audit.replay_check import check_run

    run_id = engine.start(msgwf.approval, {"table": "orders"})
    drive_as_worker(engine, run_id)
    waiting = check_run(engine.store.load(run_id), msgwf.approval)
    assert (waiting.outcome, waiting.next_step) == ("resumes", "receive#0")
    engine.send(run_id, "approval", "yes")
    drive_as_worker(engine, run_id)
    assert check_run(engine.store.load(run_id), msgwf.approval).outcome == "replays"
