"""Rebuilding while the engine keeps writing and a projector keeps following the log."""

from __future__ import annotations

import threading
import time

import pytest
from projection_histories import Writer, open_store, random_runs, view_rows
from view_oracle import actual_views

from audit import tamper
from engine import Engine, step, workflow
from projections import EventNotProjectableError, Projector
from support import wait_until


def test_rebuild_while_writing_swaps_in_every_event_up_to_the_head(store_url: str) -> None:
    store = open_store(store_url)
    random_runs(store, 150, 25, seed=7)
    writer = Writer(store_url, runs=3, seed=1000)
    with Projector(store, batch_size=60) as projector:
        projector.catch_up()
        runs_table = projector.views[0].bound[0].qname
        counts: list[int] = []
        reading = threading.Event()

        def reader() -> None:
            # Readers never see a half-built view: the live table only ever grows.
            while not reading.is_set():
                with projector.db.transaction() as tx:
                    counts.append(tx.fetch(f"SELECT count(*) FROM {runs_table}")[0][0])
                time.sleep(0.005)

        watcher = threading.Thread(target=reader, daemon=True)
        writer.start()
        watcher.start()
        wait_until(lambda: writer.saves >= 2, "two saves by the writer")
        head_before = store.head()
        position = projector.rebuild()
        reading.set()
        watcher.join()
        writer.finish()
        assert position >= head_before > 0
        assert writer.saves > 2, "the engine kept writing during the rebuild"
        assert counts == sorted(counts)
        assert len(counts) > 3
        assert set(projector.positions().values()) == {position}
        # Everything up to `position` is in: applying the rest gives a clean rebuild's rows.
        projector.catch_up()
        caught_up = view_rows(projector)
        projector.rebuild()
        assert view_rows(projector) == caught_up
    store.close()


def test_rebuild_of_one_view_while_a_projector_follows_the_log(store_url: str) -> None:
    store = open_store(store_url)
    random_runs(store, 100, 20, seed=8)
    writer = Writer(store_url, runs=3, seed=1000)
    stop = threading.Event()
    with Projector(store_url, batch_size=25) as follower, Projector(store, batch_size=40) as p:
        errors: list[BaseException] = []

        def follow() -> None:
            try:
                follower.run(stop, poll_interval_s=0.02)
            except BaseException as e:
                errors.append(e)

        thread = threading.Thread(target=follow, daemon=True)
        thread.start()
        writer.start()
        p.rebuild("step_attempts")
        p.rebuild("runs")
        writer.finish()
        head = store.head()

        def caught_up() -> bool:
            assert not errors, errors
            return set(p.positions().values()) == {head}

        wait_until(caught_up, "the follower to reach the head")
        stop.set()
        thread.join(timeout=30)
        assert not errors, errors
        followed = view_rows(p)
        p.rebuild()
        assert view_rows(p) == followed
    store.close()


def test_a_view_set_back_under_a_following_projector_is_replayed(store_url: str) -> None:
    """A view found behind the batch under its lock is read again from its own position."""
    from projections.rebuild import reset

    store = open_store(store_url)
    random_runs(store, 30, 15, seed=9)
    stop = threading.Event()
    with Projector(store_url, batch_size=20) as follower, Projector(store) as p:
        thread = threading.Thread(target=follower.run, args=(stop,),
                                  kwargs={"poll_interval_s": 0.02}, daemon=True)
        thread.start()
        def at(head: int) -> bool:
            assert thread.is_alive()
            return set(p.positions().values()) == {head}

        for seed in (10, 11):
            head = store.head()
            wait_until(lambda h=head: at(h), "the follower to reach the head")
            hotspots = next(v for v in p.views if v.name == "hotspots")
            with p.db.transaction([hotspots.lock_name]) as tx:
                reset(tx, hotspots)  # as if a rebuild had swapped in an empty view
            random_runs(store, 10, 15, seed=seed)
        head = store.head()
        wait_until(lambda: at(head), "the follower to replay the view set back")
        stop.set()
        thread.join(timeout=30)
        followed = view_rows(p)
        p.rebuild()
        assert view_rows(p) == followed
    store.close()


def test_a_failed_rebuild_leaves_the_live_views_as_they_were(engine: Engine) -> None:
    @step
    def one() -> int:
        return 1

    @workflow("rebuilt")
    def flow() -> int:
        return one()

    runs = [engine.run(flow, {}).run_id for _ in range(3)]
    store = engine.store
    with Projector(store, batch_size=2) as projector:
        projector.catch_up()
        before = actual_views(projector)
        position = projector.rebuild()
        # Someone rewrites a stored event into a type this code does not know.
        topic, state = tamper.read(engine, runs[1], 2)
        tamper.write(engine, runs[1], 2, "engine.events:StepVanished", state)
        with pytest.raises(EventNotProjectableError, match="StepVanished"):
            projector.rebuild()
        assert actual_views(projector) == before  # nothing swapped in
        assert projector.status()[0].position == position
        tamper.write(engine, runs[1], 2, topic, state)  # repaired: the next rebuild works
        assert projector.rebuild() == position
        assert actual_views(projector) == before


def test_a_rebuilt_view_has_every_index_of_its_table(store_url: str) -> None:
    """A rebuild fills its tables first and builds their secondary indexes after: the tables
    swapped in must have them all, as a view made from scratch does."""
    store = open_store(store_url)
    random_runs(store, 40, 15, seed=12)
    with Projector(store) as projector:
        projector.catch_up()
        projector.rebuild()
        with projector.db.transaction() as tx:
            for view in projector.views:
                for table in view.bound:
                    if tx.db.is_sqlite:
                        found = [r[1] for r in tx.fetch(f'PRAGMA index_list("{table.name}")')
                                 if r[3] == "c"]  # made by CREATE INDEX, not the key's
                    else:
                        found = [r[0] for r in tx.fetch(
                            "SELECT indexname FROM pg_indexes WHERE schemaname = ? "
                            "AND tablename = ? AND right(indexname, 5) <> '_pkey'",
                            (tx.db.schema, table.name))]
                    assert len(found) == len(table.spec.indexes), table.name
        assert projector.rebuild() == store.head()
    store.close()
