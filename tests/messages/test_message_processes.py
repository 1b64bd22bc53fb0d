"""Messages across real processes, both stores: `stepstone send` from another process wakes a
run waiting in `stepstone run` or under a worker; `kill -9` while it waits and after it
received still consumes the message exactly once, with the output of an uninterrupted run;
asking wrongly is one line, exit 2, nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import orjson

import msgwf
from engine import Engine, RunStatus, Settings, run_id_for_key
from engine.events import MessageReceived
from support import child_env, wait_until

APPROVED = {"plan": {"table": "orders", "rows": 6000}, "approved": {"by": "ana"},
            "result": "orders: {'by': 'ana'}"}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`stepstone ARGS` in a child process, to completion."""
    return subprocess.run([sys.executable, "-m", "stepstone", *args], capture_output=True,
                          text=True, env=child_env(), timeout=120, check=False)


def engine_for(url: str) -> Engine:
    return Engine(Settings(database_url=url, worker_id="message-test"))


def status(engine: Engine, run_id: UUID) -> RunStatus | None:
    try:
        return engine.status(run_id).status
    except Exception:  # not started yet
        return None


def run_cmd(url: str, key: str, data: dict[str, Any]) -> list[str]:
    return [sys.executable, "-m", "stepstone", "run", "msgwf:approval", "--input",
            orjson.dumps(data).decode(), "--key", key, "--db", url]


def consumed(engine: Engine, run_id: UUID) -> list[str | None]:
    return [e.fields["message_id"] for e in engine.history(run_id) if e.kind is MessageReceived]


def test_kill_9_while_waiting_and_after_receiving_consumes_once(
    store_url: str, procs: Any, tmp_path: Path
) -> None:
    key = f"k-{uuid4()}"
    data = {"table": "orders", "hold_dir": str(tmp_path)}
    run_id = run_id_for_key("approval", key)
    with engine_for(store_url) as engine:
        first = procs.spawn(run_cmd(store_url, key, data))
        wait_until(lambda: status(engine, run_id) is RunStatus.WAITING, "the run to wait")
        assert procs.sigkill(first)  # killed while it waits for the approval
        sent = cli("send", str(run_id), "approval", "--data", '{"by": "ana"}', "--id", "ok-1",
                   "--db", store_url)
        assert sent.returncode == 0, sent.stderr
        again = cli("send", str(run_id), "approval", "--data", '{"by": "ana"}', "--id", "ok-1",
                    "--db", store_url)
        assert again.returncode == 0, again.stderr
        assert "nothing more was stored" in again.stdout
        second = procs.spawn(run_cmd(store_url, key, data))
        wait_until(lambda: (tmp_path / "cut_over.1").exists(), "the step after the receive")
        assert procs.sigkill(second)  # killed after consuming the message, before the end
        assert consumed(engine, run_id) == ["ok-1"]  # committed with the next step's start
        third = procs.spawn(run_cmd(store_url, key, data))
        assert procs.finish(third) == 0, procs.output(third)
        assert engine.result(run_id) == APPROVED
        assert consumed(engine, run_id) == ["ok-1"]
        assert engine.history(run_id)[-1].event_type == "RunCompleted"


def test_a_worker_run_waits_without_a_worker_and_wakes_on_send(
    store_url: str, procs: Any
) -> None:
    worker_cmd = [sys.executable, "-m", "stepstone", "worker", "--db", store_url, "--import",
                  "msgwf", "--heartbeat", "0.5", "--lease", "3"]
    worker = procs.spawn(worker_cmd)
    with engine_for(store_url) as engine:
        run_id = engine.start(msgwf.approval, {"table": "orders"})
        wait_until(lambda: status(engine, run_id) is RunStatus.WAITING, "the run to wait")
        wait_until(lambda: (p := engine.placement(run_id)) is not None and p.held_by is None,
                   "the worker to hand the run back")
        assert procs.sigkill(worker)  # the worker dies while the run waits
        worker = procs.spawn(worker_cmd)
        sent = cli("send", str(run_id), "approval", "--data", '{"by": "ana"}', "--db",
                   store_url)
        assert sent.returncode == 0, sent.stderr
        assert "it wakes now" in sent.stdout
        assert engine.wait(run_id, timeout_s=60).status is RunStatus.COMPLETED
        assert engine.result(run_id) == APPROVED
        assert len(consumed(engine, run_id)) == 1
    worker.terminate()
    assert procs.finish(worker, timeout=60) == 0


def _messages_stored(url: str) -> int:
    with engine_for(url) as engine:
        def count(cur: Any) -> int:
            cur.execute(engine.leases.sql("SELECT count(*) FROM {messages}"))
            (row,) = cur.fetchall()
            return int(next(iter(row.values())) if isinstance(row, dict) else row[0])

        return engine.leases.call(count)


def test_sending_wrongly_is_one_line_and_exit_2_with_nothing_written(
    store_url: str, tmp_path: Path
) -> None:
    big = tmp_path / "big.json"
    big.write_bytes(orjson.dumps("x" * 300_000))
    with engine_for(store_url) as engine:
        done = engine.run(msgwf.approval, {"table": "t", "timeout_s": 0.0}).run_id
        live = engine.start(msgwf.approval, {"table": "t"})
        version = engine.store.load(live).version
    cases = [
        ([str(uuid4()), "approval"], "no run with id"),
        (["not-a-run", "approval"], "is not a run id"),
        ([str(done), "approval"], "already completed"),
        ([str(live), "approval", "--data", "{nope"], "--data is not JSON"),
        ([str(live), "approval", "--data", f"@{big}"], "over the limit"),
        ([str(live), "approval", "--data", f"@{tmp_path / 'missing.json'}"],
         "cannot read the file"),
        ([str(live), "t" * 300], "must be a non-empty string"),
        ([str(live), "approval", "--id", ""], "must be a non-empty string"),
    ]
    for args, message in cases:
        r = cli("send", *args, "--db", store_url)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1, (args, r.stderr)
        assert message in lines[0], (args, r.stderr)
    assert _messages_stored(store_url) == 0
    with engine_for(store_url) as engine:
        assert engine.store.load(live).version == version
