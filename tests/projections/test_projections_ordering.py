"""Out-of-order commits: a writer issued a lower notification id commits after a higher one.

A projector tailing the log records the position of the last event it applied; if an event
with a lower id could still commit after that, the projector would never see it. PostgreSQL
hands out ids from a sequence at insert time, so only a lock held from the insert to the
commit keeps commit order equal to id order. These tests hold a writer inside its transaction
(a trigger waits on an advisory lock the test holds) after its id was issued:

- through the engine's own insert path (`RunStore`, as store_url.py configures it), the second
  writer waits for the first, and the projector never moves past the held event;
- through an insert path without the lock (the library's stored function in 9.5.6), the second
  writer commits first and the projector's position passes the held event, which is then lost
  to the view: the hazard the lock prevents.

SQLite has no such case: its writers are serialized by the database's single write lock,
under which rowids are assigned and committed, so a lower id never commits after a higher one.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest
from eventsourcing.postgres import PostgresApplicationRecorder
from projection_histories import T0, RunSim, open_store, random_runs, view_rows

from engine.store import RunStore
from projections import Projector
from support import wait_until

LOCK_KEY = 424242


def _schema_of(url: str) -> str:
    return url.split("schema=")[1]


def _hold_inserts_of(url: str, run_id: uuid.UUID) -> None:
    schema = _schema_of(url)
    with psycopg.connect(url.split("?")[0], autocommit=True) as conn:
        conn.execute(
            f'CREATE FUNCTION "{schema}".hold_insert() RETURNS trigger LANGUAGE plpgsql AS $$ '
            f"BEGIN IF NEW.originator_id = '{run_id}'::uuid THEN "
            f"PERFORM pg_advisory_xact_lock_shared({LOCK_KEY}); END IF; RETURN NEW; END $$"
        )
        conn.execute(
            f'CREATE TRIGGER hold AFTER INSERT ON "{schema}".stepstone_events '
            f'FOR EACH ROW EXECUTE FUNCTION "{schema}".hold_insert()'
        )


def _waiting(url: str, sql: str) -> Callable[[], bool]:
    def check() -> bool:
        with psycopg.connect(url.split("?")[0], autocommit=True) as conn:
            return bool(conn.execute(sql).fetchone()[0])  # type: ignore[index]

    return check


@pytest.fixture
def follower(pg_schema: str) -> Iterator[tuple[Projector, list[int]]]:
    """A projector following the log (LISTEN/NOTIFY) in a thread; yields it and its positions."""
    store = open_store(pg_schema)
    random_runs(store, 5, 8, seed=21)
    projector = Projector(pg_schema, batch_size=10)
    seen: list[int] = []
    stop = threading.Event()
    thread = threading.Thread(
        target=projector.run, args=(stop,), kwargs={"on_batch": seen.append}, daemon=True
    )
    thread.start()
    wait_until(lambda: bool(seen) and seen[-1] == store.head(), "the follower to catch up")
    store.close()
    yield projector, seen
    stop.set()
    thread.join(timeout=30)
    projector.close()


def _run(n: int) -> RunSim:
    sim = RunSim(uuid.UUID(int=1000 + n), "ordered", T0)
    sim.do("step", random.Random(n))
    return sim


def test_engine_insert_path_keeps_commit_order(
    pg_schema: str, follower: tuple[Projector, list[int]]
) -> None:
    projector, seen = follower
    held, free = _run(1), _run(2)
    _hold_inserts_of(pg_schema, held.run.id)
    stores = [open_store(pg_schema), open_store(pg_schema)]
    head = stores[0].head()
    with psycopg.connect(pg_schema.split("?")[0], autocommit=True) as lock:
        lock.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        a = threading.Thread(target=stores[0].save_run, args=(held.run,))
        a.start()
        wait_until(_waiting(pg_schema, "SELECT count(*) FROM pg_locks WHERE locktype = "
                           f"'advisory' AND objid = {LOCK_KEY} AND NOT granted"), "A to hold")
        b = threading.Thread(target=stores[1].save_run, args=(free.run,))
        b.start()
        # The engine's path makes B wait for A's table lock instead of committing first.
        wait_until(_waiting(pg_schema, "SELECT count(*) FROM pg_locks l JOIN pg_class c ON "
                           "c.oid = l.relation WHERE c.relname = 'stepstone_events' "
                           "AND NOT l.granted"), "B to wait for A")
        time.sleep(0.2)  # the follower has every chance to run ahead; it must not
        assert stores[0].head() == head
        assert max(seen) == head
        lock.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
    a.join(timeout=30)
    b.join(timeout=30)
    final = stores[0].head()
    wait_until(lambda: seen[-1] == final, "the follower to apply both")
    ids = {str(n.originator_id): n.id for n in
           stores[0].recorder.select_notifications(head, 10, inclusive_of_start=False)}
    assert ids[str(held.run.id)] < ids[str(free.run.id)]
    followed = view_rows(projector)
    assert {str(held.run.id), str(free.run.id)} <= {
        str(r[0]) for r in followed["stepstone_view_runs"]
    }
    projector.rebuild()
    assert view_rows(projector) == followed
    for store in stores:
        store.close()


def test_without_the_lock_the_position_passes_an_uncommitted_lower_id(
    pg_schema: str, follower: tuple[Projector, list[int]]
) -> None:
    """The negative control: the library's unlocked stored function as the insert path."""
    projector, seen = follower
    held, free = _run(3), _run(4)
    _hold_inserts_of(pg_schema, held.run.id)
    store = open_store(pg_schema)
    unlocked = _unlocked_recorder(store)

    def insert(sim: RunSim) -> None:
        unlocked.insert_events([store.mapper.to_stored_event(e) for e in sim.run.collect_events()])

    head = store.head()
    with psycopg.connect(pg_schema.split("?")[0], autocommit=True) as lock:
        lock.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        a = threading.Thread(target=insert, args=(held,))
        a.start()
        wait_until(_waiting(pg_schema, "SELECT count(*) FROM pg_locks WHERE locktype = "
                           f"'advisory' AND objid = {LOCK_KEY} AND NOT granted"), "A to hold")
        insert(free)  # not held up by A: commits with the higher id
        passed = store.head()
        wait_until(lambda: seen[-1] == passed, "the follower to pass the held id")
        lock.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
    a.join(timeout=30)
    ids = {str(n.originator_id): n.id for n in
           store.recorder.select_notifications(head, 10, inclusive_of_start=False)}
    assert ids[str(held.run.id)] < ids[str(free.run.id)] == passed
    projector.catch_up()
    runs = {str(r[0]) for r in view_rows(projector)["stepstone_view_runs"]}
    assert str(free.run.id) in runs
    assert str(held.run.id) not in runs  # lost: the hazard the engine's lock prevents
    store.close()


def _unlocked_recorder(store: RunStore) -> PostgresApplicationRecorder:
    datastore = store.factory.datastore  # type: ignore[attr-defined]
    assert datastore.enable_db_functions
    recorder = PostgresApplicationRecorder(datastore, events_table_name="stepstone_events")
    recorder.create_table()  # the table exists; this adds the library's unlocked function
    return recorder
