"""Each route against real runs, field by field against the engine's own replay."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any
from uuid import UUID, uuid4

from fastapi.testclient import TestClient
from world import World, client, world  # noqa: F401  (shared fixtures)

from engine import HistoryEntry

TERMINAL = {"RunCompleted", "RunFailed", "RunCancelled"}


def ts(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value.replace("Z", "+00:00"))


def expected_counts(history: list[HistoryEntry]) -> dict[str, Any]:
    """Counters restated from the history, independently of the projections' code."""
    open_attempt: dict[str, bool] = {}
    crashes = retries = 0
    for e in history:
        key = e.fields.get("step_key")
        if e.event_type == "StepStarted":
            crashes += open_attempt.get(key, False)
            retries += e.fields["attempt"] > 1
            open_attempt[key] = True
        elif e.event_type in ("StepCompleted", "StepFailed", "StepPreempted"):
            open_attempt[key] = False
    preemptions = sum(e.event_type == "RunPreempted" for e in history)
    errors = [e for e in history if e.event_type in ("StepFailed", "RunFailed")]
    ends = [e for e in history if e.event_type in TERMINAL]
    return {
        "crashes": crashes, "retries": retries, "preemptions": preemptions,
        "interruptions": crashes + preemptions,
        "last_error": errors[-1] if errors else None,
        "finished_at": ends[-1].timestamp if ends else None,
    }


def test_every_run_field_matches_the_engine_replay(world: World, client: TestClient) -> None:
    assert world.infos
    for run_id, info in world.infos.items():
        body = client.get(f"/runs/{run_id}").json()
        history = world.histories[run_id]
        want = expected_counts(history)
        assert UUID(body["run_id"]) == run_id
        assert body["workflow"] == info.workflow
        assert body["workflow_version"] == info.workflow_version
        assert body["status"] == info.status.value
        assert body["steps_done"] == info.steps_completed
        assert body["steps_started"] == info.steps_recorded
        assert body["attempts"] == info.attempts
        assert body["current_step"] == info.current_step
        assert ts(body["started_at"]) == info.started_at
        assert ts(body["updated_at"]) == info.updated_at
        assert ts(body["finished_at"]) == want["finished_at"]
        assert body["last_position"] == history[-1].position
        assert body["worker"] == history[-1].worker_id
        for name in ("crashes", "retries", "preemptions", "interruptions"):
            assert body[name] == want[name], (run_id, name)
        error = want["last_error"]
        if error is None:
            assert body["last_error"] is None
        else:
            assert body["last_error"] == {
                "type": error.fields["error_type"], "message": error.fields["message"],
                "step": error.fields["step_key"],
            }
        if info.current_step is not None:
            marks = [e for e in history if e.event_type == "StepCheckpointed"
                     and e.fields["step_key"] == info.current_step]
            if marks:
                assert body["progress"] == {"done": marks[-1].fields["progress_done"],
                                            "total": marks[-1].fields["progress_total"]}
        else:
            assert body["progress"] is None


def test_progress_has_a_yardstick_from_the_latest_completed_run(
    world: World, client: TestClient
) -> None:
    """A run's steps are counted against the steps the latest completed run of its workflow
    version took, not against its own steps started (which made a run at its first step of
    ten read 0 of 1, and a failed one read as far along as it got)."""
    latest: dict[tuple[str, int], tuple[object, int]] = {}
    for info in world.infos.values():
        if info.status.value == "completed":
            key = (info.workflow, info.workflow_version)
            finished = world.histories[info.run_id][-1].timestamp
            if key not in latest or latest[key][0] < finished:  # type: ignore[operator]
                latest[key] = (finished, info.steps_completed)
    listed = {r["run_id"]: r for r in client.get("/runs", params={"limit": 1000}).json()["items"]}
    for run_id, info in world.infos.items():
        body = client.get(f"/runs/{run_id}").json()
        if info.status.value == "completed":
            want = info.steps_completed
        else:
            want = latest.get((info.workflow, info.workflow_version), (None, None))[1]
        assert body["steps_expected"] == want, (info.workflow, info.status)
        assert listed[str(run_id)]["steps_expected"] == want
    preempted = client.get(f"/runs/{world.runs['preempted']}").json()
    assert (preempted["steps_done"], preempted["steps_expected"]) == (0, 2)
    failed = client.get(f"/runs/{world.runs['failed']}").json()
    assert failed["steps_expected"] is None  # no api-broken run ever completed


def test_the_scenarios_show_what_happened(world: World, client: TestClient) -> None:
    get = lambda name: client.get(f"/runs/{world.runs[name]}").json()  # noqa: E731
    assert get("retried")["retries"] == 2
    assert get("failed")["status"] == "failed"
    assert get("failed")["last_error"]["type"] == "NonRetryableError"
    assert (get("resumed")["status"], get("resumed")["preemptions"]) == ("completed", 1)
    paused = get("preempted")
    assert (paused["status"], paused["current_step"]) == ("preempted", "units#0")
    # Asked to stop while on unit 3: that unit's checkpoint is saved, then the step unwinds.
    assert paused["progress"] == {"done": 4, "total": 9}
    crashed = get("crashed")
    assert (crashed["status"], crashed["crashes"], crashed["interruptions"]) == ("completed", 1, 1)


def test_steps_are_the_attempts_of_the_history(world: World, client: TestClient) -> None:
    for run_id, history in world.histories.items():
        expected: dict[tuple[str, int], dict[str, Any]] = {}
        for e in history:
            if e.event_type == "StepStarted":
                for (key, _), row in expected.items():
                    if key == e.fields["step_key"] and row["outcome"] == "running":
                        row["outcome"] = "crashed"
                expected[(e.fields["step_key"], e.fields["attempt"])] = {
                    "step_name": e.fields["step_name"], "worker": e.worker_id,
                    "started_at": e.timestamp, "ended_at": None, "outcome": "running",
                    "error_type": None,
                }
            elif e.event_type in ("StepCompleted", "StepFailed", "StepPreempted"):
                row = expected[(e.fields["step_key"], e.fields["attempt"])]
                row["outcome"] = e.event_type.removeprefix("Step").lower()
                row["ended_at"] = e.timestamp
                row["error_type"] = e.fields.get("error_type")
        items: list[dict[str, Any]] = []
        cursor = None
        while True:
            q = {"limit": 2} | ({"cursor": cursor} if cursor else {})
            page = client.get(f"/runs/{run_id}/steps", params=q).json()
            items += page["items"]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        got = {
            (i["step_key"], i["attempt"]): {
                "step_name": i["step_name"], "worker": i["worker"],
                "started_at": ts(i["started_at"]), "ended_at": ts(i["ended_at"]),
                "outcome": i["outcome"], "error_type": i["error_type"],
            }
            for i in items
        }
        assert got == expected, run_id
        starts = [ts(i["started_at"]) for i in items]
        assert starts == sorted(starts)


def test_events_are_the_log_with_every_field(world: World, client: TestClient) -> None:
    for run_id, history in world.histories.items():
        items: list[dict[str, Any]] = []
        cursor = None
        while True:
            q = {"limit": 3} | ({"cursor": cursor} if cursor else {})
            page = client.get(f"/runs/{run_id}/events", params=q).json()
            items += page["items"]
            cursor = page["next_cursor"]
            if not page["more"]:
                break
        assert len(items) == len(history)
        for got, want in zip(items, history, strict=True):
            assert got["position"] == want.position
            assert got["version"] == want.version
            assert ts(got["timestamp"]) == want.timestamp
            assert got["event_type"] == want.event_type
            assert got["worker_id"] == want.worker_id
            assert got["fields"] == want.fields
        # The cursor after the last event tails the log: nothing new yet.
        tail = client.get(f"/runs/{run_id}/events", params={"cursor": cursor}).json()
        assert tail["items"] == []
        assert tail["next_cursor"] == cursor


def test_events_page_backwards_and_by_type(world: World, client: TestClient) -> None:
    """The dashboard's bounded reads: the newest page, pages before it, one type only."""
    for run_id, history in world.histories.items():
        versions: list[int] = []
        before = 2**53 - 1
        while True:
            page = client.get(f"/runs/{run_id}/events",
                              params={"limit": 3, "before": before}).json()
            versions = [e["version"] for e in page["items"]] + versions
            if not page["more"]:
                break
            before = page["items"][0]["version"]
        assert versions == [h.version for h in history]
        wanted = [h.position for h in history if h.event_type in ("StepStarted", "RunStarted")]
        page = client.get(f"/runs/{run_id}/events", params={
            "limit": 2, "before": 2**53 - 1, "type": "StepStarted,RunStarted"}).json()
        assert [e["position"] for e in page["items"]] == wanted[-2:]
        assert page["more"] == (len(wanted) > 2)
    bad = client.get(f"/runs/{run_id}/events", params={"type": "StepDone"})
    assert bad.status_code == 422
    assert "unknown event type StepDone" in bad.text


def test_runs_list_pages_filters_and_orders(world: World, client: TestClient) -> None:
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        q = {"limit": 4} | ({"cursor": cursor} if cursor else {})
        page = client.get("/runs", params=q).json()
        assert len(page["items"]) <= 4
        seen += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert {UUID(r["run_id"]) for r in seen} == set(world.infos)
    assert len(seen) == len(world.infos)
    keys = [(ts(r["started_at"]), r["run_id"]) for r in seen]
    assert keys == sorted(keys, reverse=True)
    statuses = Counter(i.status.value for i in world.infos.values())
    for status, count in statuses.items():
        items = client.get("/runs", params={"status": status, "limit": 100}).json()["items"]
        assert len(items) == count
        assert {r["status"] for r in items} == {status}
    units = [i for i in world.infos.values() if i.workflow == "api-units"]
    items = client.get("/runs", params={"workflow": "api-units", "limit": 100}).json()["items"]
    assert {UUID(r["run_id"]) for r in items} == {i.run_id for i in units}
    middle = sorted(i.started_at for i in world.infos.values())[len(world.infos) // 2]
    after = client.get("/runs", params={"started_after": middle.isoformat(), "limit": 100})
    before = client.get("/runs", params={"started_before": middle.isoformat(), "limit": 100})
    assert {r["run_id"] for r in after.json()["items"]} == {
        str(i.run_id) for i in world.infos.values() if i.started_at >= middle}
    assert len(before.json()["items"]) + len(after.json()["items"]) == len(world.infos)


def test_workflows_and_hotspots_add_up(world: World, client: TestClient) -> None:
    by_workflow: dict[str, Counter[str]] = {}
    for info in world.infos.values():
        by_workflow.setdefault(info.workflow, Counter())[info.status.value] += 1
    items = client.get("/workflows").json()["items"]
    assert {w["workflow"] for w in items} == set(by_workflow)
    for w in items:
        counts = by_workflow[w["workflow"]]
        assert w["runs"] == sum(counts.values())
        for status in ("pending", "running", "preempted", "completed", "failed", "cancelled"):
            assert w[status] == counts[status]
    spots = {(h["workflow"], h["step_name"]): h for h in client.get("/hotspots").json()["items"]}
    attempts: Counter[tuple[str, str]] = Counter()
    failures: Counter[tuple[str, str]] = Counter()
    for run_id, history in world.histories.items():
        wf = world.infos[run_id].workflow
        for e in history:
            if e.event_type == "StepStarted":
                attempts[(wf, e.fields["step_name"])] += 1
            if e.event_type == "StepFailed":
                failures[(wf, e.fields["step_key"].partition("#")[0])] += 1
    assert {k: v["attempts"] for k, v in spots.items()} == dict(attempts)
    assert {k: v["failures"] for k, v in spots.items() if v["failures"]} == dict(failures)
    assert spots[("api-crash", "fragile")]["crashes"] == 1
    assert spots[("api-units", "units")]["preemptions"] == 2
    order = [h["interruptions"] for h in client.get("/hotspots").json()["items"]]
    assert order == sorted(order, reverse=True)


def test_unknown_runs_are_404_and_bad_ids_422(client: TestClient) -> None:
    missing = uuid4()
    for path in ("", "/steps", "/events", "/stream"):
        r = client.get(f"/runs/{missing}{path}")
        assert r.status_code == 404, path
        assert str(missing) in r.json()["detail"]
        bad = client.get(f"/runs/not-a-uuid{path}")
        assert bad.status_code == 422
        assert set(bad.json()) == {"detail"}


def test_health_readiness_and_metrics(world: World, client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    head = max(e.position for h in world.histories.values() for e in h)
    assert body["ready"] is True
    assert body["head"] == head
    assert {v["view"]: v["lag"] for v in body["views"]} == {
        "runs": 0, "step_attempts": 0, "hotspots": 0, "workflow_stats": 0,
        "published": 0}
    from prometheus_client.parser import text_string_to_metric_families

    text = client.get("/metrics").text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text) for s in family.samples
    }
    completed = sum(i.status.value == "completed" and i.workflow == "api-units"
                    for i in world.infos.values())
    key = ("stepstone_runs", (("status", "completed"), ("workflow", "api-units")))
    assert samples[key] == completed
    assert samples[("stepstone_log_head", ())] == head
    assert samples[("stepstone_projection_lag_events", (("view", "runs"),))] == 0
    crash_key = ("stepstone_step_crashes", (("step", "fragile"), ("workflow", "api-crash")))
    assert samples[crash_key] == 1
    assert any(name == "stepstone_api_request_duration_seconds_count" for name, _ in samples)


def test_a_finished_run_streams_its_state_then_ends(world: World, client: TestClient) -> None:
    run_id = world.runs["completed"]
    with client.stream("GET", f"/runs/{run_id}/stream") as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        text = "".join(r.iter_text())
    assert "event: run" in text
    assert "event: end" in text
    assert f'"last_position":{world.histories[run_id][-1].position}' in text
