"""The lease contract on both stores, with clocks the test moves: expiry, takeover, renewal.

Two `LeaseStore`s stand for two workers on one index; `LeaseKeeper` is the heartbeat of one of
them. Nothing is mocked: the clocks are the only thing injected, so a lease can expire without
the test waiting for it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from conftest import POSTGRES_URL
from engine import LeaseLostError, StoreUnavailableError
from engine.storage import parse_store_url
from engine.workers.heartbeat import LeaseKeeper
from engine.workers.leases import DEFAULT_QUEUE, LeaseStore

LEASE = 10.0


class Clock:
    """Seconds that move only when the test says so."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def index(store_url: str) -> Iterator[tuple[LeaseStore, LeaseStore, Clock, uuid.UUID]]:
    """Workers "a" and "b" on one index sharing a clock, and one runnable run."""
    clock = Clock()
    location = parse_store_url(store_url)
    a, b = LeaseStore(location, clock=clock), LeaseStore(location, clock=clock)
    run_id = uuid.uuid4()
    a.enqueue(run_id, "wf", DEFAULT_QUEUE)
    try:
        yield a, b, clock, run_id
    finally:
        a.close()
        b.close()


def test_a_lease_is_exclusive_until_it_expires_then_taken_over(index: tuple) -> None:
    a, b, clock, run_id = index
    [claim] = a.claim("a", None, 1, LEASE)
    assert (claim.run_id, claim.taken_from, claim.takeovers) == (run_id, None, 0)
    clock.advance(LEASE - 0.001)
    assert b.claim("b", None, 1, LEASE) == []  # still a's
    clock.advance(0.001)
    [taken] = b.claim("b", None, 1, LEASE)  # expired exactly now
    assert (taken.run_id, taken.taken_from, taken.takeovers) == (run_id, "a", 1)
    row = b.row(run_id)
    assert row is not None
    assert (row.lease_owner, row.lease_expires_at, row.claims) == ("b", clock.now + LEASE, 2)


def test_a_heartbeat_extends_only_the_owners_lease(index: tuple) -> None:
    a, b, clock, run_id = index
    a.claim("a", None, 1, LEASE)
    clock.advance(8)
    assert a.heartbeat("a", [run_id], LEASE) == {run_id}
    clock.advance(8)  # 16s after the claim: alive only thanks to the renewal
    assert b.claim("b", None, 1, LEASE) == []
    assert b.heartbeat("b", [run_id], LEASE) == set()  # b never held it
    row = a.row(run_id)
    assert row is not None
    assert (row.lease_owner, row.lease_expires_at) == ("a", 1_000.0 + 8 + LEASE)


def test_the_old_owner_cannot_renew_or_release_a_lease_taken_over(index: tuple) -> None:
    a, b, clock, run_id = index
    a.claim("a", None, 1, LEASE)
    clock.advance(LEASE + 1)
    assert b.claim("b", None, 1, LEASE)[0].taken_from == "a"
    expires = clock.now + LEASE
    clock.advance(1)
    assert a.heartbeat("a", [run_id], LEASE) == set()  # refused: b holds it
    assert a.release(run_id, "a") is False
    row = b.row(run_id)
    assert row is not None
    assert (row.lease_owner, row.lease_expires_at, row.state) == ("b", expires, "ready")
    assert b.heartbeat("b", [run_id], LEASE) == {run_id}
    assert b.release(run_id, "b", state="done") is True
    assert a.claim("a", None, 1, LEASE) == []  # done runs are not claimable


def test_a_clean_release_resets_the_takeover_count(index: tuple) -> None:
    a, b, clock, run_id = index
    a.claim("a", None, 1, LEASE)
    clock.advance(LEASE)
    assert b.claim("b", None, 1, LEASE)[0].takeovers == 1
    clock.advance(LEASE)
    assert a.claim("a", None, 1, LEASE)[0].takeovers == 2
    assert a.release(run_id, "a") is True
    [again] = b.claim("b", None, 1, LEASE)
    assert (again.taken_from, again.takeovers) == (None, 0)


def test_the_keeper_refuses_writes_once_its_lease_lapses_or_is_taken(index: tuple) -> None:
    a, b, clock, run_id = index
    local = Clock(50.0)  # the keeper's own monotonic clock
    keeper = LeaseKeeper(a, "a", lease_s=LEASE, interval_s=1.0, clock=local)
    a.claim("a", None, 1, LEASE)
    keeper.hold(run_id)
    local.advance(LEASE - keeper.margin_s - 0.01)
    keeper.check(run_id)  # still inside the safe part of the lease
    clock.advance(5)
    keeper.renew()  # the renewal restarts local validity
    local.advance(LEASE - keeper.margin_s - 0.01)
    keeper.check(run_id)
    local.advance(0.02)
    with pytest.raises(LeaseLostError, match="not renewed"):
        keeper.check(run_id)  # a paused process: no write, whatever the index says

    keeper.hold(run_id)
    clock.advance(LEASE)
    assert b.claim("b", None, 1, LEASE)[0].taken_from == "a"
    keeper.renew()  # the heartbeat finds b's lease: it must not extend it
    with pytest.raises(LeaseLostError, match="another worker holds it now"):
        keeper.check(run_id)
    row = b.row(run_id)
    assert row is not None
    assert (row.lease_owner, row.lease_expires_at) == ("b", clock.now + LEASE)
    keeper.drop(run_id)
    assert keeper.held() == []


def _terminate(leases: LeaseStore) -> None:
    """Kill the index's server connection from another session, as a failover would."""
    pid = leases._db._conn.info.backend_pid  # type: ignore[attr-defined]
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        assert conn.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)


def test_a_dropped_connection_is_replaced_and_a_failed_heartbeat_is_not_a_lost_lease(
    pg_schema: str,
) -> None:
    clock, local = Clock(), Clock(0.0)
    leases = LeaseStore(parse_store_url(pg_schema), clock=clock)
    keeper = LeaseKeeper(leases, "a", lease_s=LEASE, interval_s=1.0, clock=local)
    schema = pg_schema.rpartition("schema=")[2]
    try:
        run_id = uuid.uuid4()
        leases.enqueue(run_id, "wf", DEFAULT_QUEUE)
        leases.claim("a", None, 1, LEASE)
        keeper.hold(run_id)
        _terminate(leases)
        clock.advance(1)
        keeper.renew()  # the dead connection is replaced on the spot: the heartbeat lands
        row = leases.row(run_id)
        assert row is not None
        assert row.lease_expires_at == clock.now + LEASE
        # A heartbeat that fails for real (the index is unreadable for a while)...
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'ALTER TABLE "{schema}".stepstone_queue RENAME TO q_away')
            try:
                with pytest.raises(StoreUnavailableError):
                    keeper.renew()
                keeper.check(run_id)  # ...is not a lost lease
            finally:
                conn.execute(f'ALTER TABLE "{schema}".q_away RENAME TO stepstone_queue')
        clock.advance(2)
        local.advance(2)
        keeper.renew()
        row = leases.row(run_id)
        assert row is not None
        assert row.lease_expires_at == clock.now + LEASE
        local.advance(LEASE - keeper.margin_s - 0.01)
        keeper.check(run_id)  # valid from the renewal, not from the claim
    finally:
        leases.close()


def test_a_lease_store_on_a_closed_port_is_unavailable_not_a_hang(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on: bound, never listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        url = f"postgresql://postgres@127.0.0.1:{port}/test"
        with pytest.raises(StoreUnavailableError, match=f"127.0.0.1:{port}"):
            LeaseStore(parse_store_url(url, connect_timeout_s=2))
