"""Child workflows in process, both stores: deterministic child ids, a local drive running its
children, a worker-style parent waiting without a thread and woken by its child's end, a
child's failure caught by the parent, cancel propagation, and links in the status."""

from __future__ import annotations

import time
from typing import Any
from uuid import UUID

import childwf
from engine import Engine, RunStatus, run_id_for_key
from engine.audit.replay_check import check_run
from engine.children import child_key
from engine.events import ChildFinished, ChildStarted, ResumeReason, RunResumed


def drive_as_worker(engine: Engine, run_id: UUID) -> Any:
    assert engine.leases.claim_run(run_id, engine.settings.worker_id, 30, workflow="x",
                                   queue="default") is None
    return engine.drive_claimed(run_id, since=time.monotonic(), suspend_after_s=1.0)


def test_a_local_drive_runs_its_children_with_ids_from_its_own(engine: Engine) -> None:
    result = engine.run(childwf.parent, {"ns": [1, -1, 2]})
    assert result.status is RunStatus.COMPLETED
    assert result.output == childwf.expected([1, -1, 2])
    history = engine.history(result.run_id)
    started = [e.fields for e in history if e.kind is ChildStarted]
    assert [f["step_key"] for f in started] == ["child#0", "child#1", "child#2"]
    for f in started:  # derived from the parent's id and the call position
        assert UUID(f["child_run_id"]) == run_id_for_key(
            "kid", child_key(result.run_id, f["step_key"]))
    finished = [e.fields["status"] for e in history if e.kind is ChildFinished]
    assert finished == ["completed", "failed", "completed"]
    info = engine.status(result.run_id)
    assert info.children == tuple(UUID(f["child_run_id"]) for f in started)
    assert engine.status(info.children[0]).parent_run_id == result.run_id
    assert check_run(engine.store.load(result.run_id), childwf.parent).outcome == "replays"


def test_a_parent_waits_without_a_worker_and_its_childs_end_wakes_it(engine: Engine) -> None:
    parent = engine.start(childwf.parent, {"ns": [3]})
    assert drive_as_worker(engine, parent).status is RunStatus.WAITING
    (kid,) = engine.status(parent).children
    info = engine.status(parent)
    assert info.waiting_for == f"child run {kid}"
    row = engine.leases.row(parent)
    assert row is not None
    assert row.available_at > time.time() + 60  # not due: it waits for its child
    assert drive_as_worker(engine, kid).status is RunStatus.COMPLETED
    row = engine.leases.row(parent)
    assert row is not None
    assert row.available_at <= time.time()  # the child's end made it due
    assert drive_as_worker(engine, parent).output == childwf.expected([3])
    resumed = [e for e in engine.history(parent) if e.kind is RunResumed]
    assert resumed[-1].fields["reason"] == ResumeReason.CHILD_WAIT.value


def test_a_child_that_ended_while_its_parent_was_held_still_wakes_it(engine: Engine) -> None:
    parent = engine.start(childwf.parent, {"ns": [3]})
    drive_as_worker(engine, parent)
    (kid,) = engine.status(parent).children
    engine.resume(kid)  # ends; its wake-up then lost to a hand-back that overwrote it:
    engine.leases.release(parent, "nobody", available_at=time.time() + 3600)
    engine.leases.call(lambda cur: cur.execute(engine.leases.sql(
        "UPDATE {queue} SET available_at = %(at)s WHERE run_id = %(id)s"),
        {"at": time.time() + 3600, "id": str(parent)}))
    from engine.children import wake_parent_or_self

    wake_parent_or_self(engine, engine.store.load(parent))  # what the hand-back does after
    row = engine.leases.row(parent)
    assert row is not None
    assert row.available_at <= time.time()


def test_cancelling_a_parent_cancels_its_children_unless_asked_not_to(engine: Engine) -> None:
    parent = engine.start(childwf.parent, {"ns": [1]})
    drive_as_worker(engine, parent)
    (kid,) = engine.status(parent).children
    engine.cancel(parent, reason="not needed")
    assert engine.status(parent).status is RunStatus.CANCELLED
    assert engine.status(kid).status is RunStatus.CANCELLED
    kid_cancel = engine.history(kid)[-1]
    assert kid_cancel.fields["reason"] == f"parent {parent} cancelled: not needed"
    other = engine.start(childwf.parent, {"ns": [2]})
    drive_as_worker(engine, other)
    (left,) = engine.status(other).children
    engine.cancel(other, reason="keep the child", children=False)
    assert engine.status(left).status is RunStatus.PENDING


def test_a_cancelled_child_fails_its_parents_call(engine: Engine) -> None:
    parent = engine.start(childwf.parent, {"ns": [1, 2]})
    drive_as_worker(engine, parent)
    (kid,) = engine.status(parent).children
    engine.cancel(kid, reason="skip this one")
    result = drive_as_worker(engine, parent)  # woken by the cancel; goes on to the next child
    assert result.status is RunStatus.WAITING
    second = engine.status(parent).children[1]
    engine.resume(second)
    done = drive_as_worker(engine, parent)
    assert done.output == {"results": ["cancelled: RunCancelled", 13], "total": 13}


def test_the_api_links_a_parent_and_its_children(engine: Engine, store_url: str) -> None:
    from fastapi.testclient import TestClient

    from api import ApiOptions, create_app
    from api.settings import ApiSettings
    from engine import Settings
    from projections import catch_up

    parent = engine.run(childwf.parent, {"ns": [1, 2]}).run_id
    children = engine.status(parent).children
    catch_up(store_url)
    app = create_app(Settings(database_url=store_url),
                     ApiOptions(allowed_hosts=("testserver",)), api=ApiSettings(api_token=None))
    with TestClient(app) as client:
        body = client.get(f"/runs/{parent}").json()
        assert body["parent_run_id"] is None
        assert [UUID(c) for c in body["children"]] == list(children)
        kid = client.get(f"/runs/{children[0]}").json()
        assert UUID(kid["parent_run_id"]) == parent
        assert kid["children"] == []
        quick = client.get(f"/runs/{parent}", params={"links": "false"}).json()
        assert "children" not in quick  # the quick re-read skips the log
