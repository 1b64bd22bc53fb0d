"""PostgreSQL: a lease whose holder process is gone is taken at once; a paused holder keeps it.

The holder is a real process that claims a run under a lease far longer than the test, then is
killed with SIGKILL or stopped with SIGSTOP. Only its session's advisory lock (gone with the
process, held while it is merely paused) can make the lease end early.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from conftest import POSTGRES_URL
from engine.storage import parse_store_url
from engine.workers.leases import DEFAULT_QUEUE, LeaseStore
from support import child_env, wait_until

LEASE = 3600.0  # no wait in this file comes near it: expiry can never be what frees a run

HOLDER = """
import sys, time
from engine.storage import parse_store_url
from engine.workers.leases import LeaseStore
store = LeaseStore(parse_store_url(sys.argv[1]))
[claim] = store.claim("holder", None, 1, 3600.0)
print("claimed", claim.run_id, flush=True)
time.sleep(3600)
"""


@pytest.fixture
def held(pg_schema: str) -> Iterator[tuple[LeaseStore, subprocess.Popen[str], uuid.UUID]]:
    """A claimer's index, a live holder process, and the run the holder leased; and other
    advisory locks held meanwhile (a negative key, a pair of ints), as other software may."""
    others = psycopg.connect(POSTGRES_URL, autocommit=True)
    others.execute("SELECT pg_advisory_lock(-5), pg_advisory_lock(2147483647, -1)")
    claimer = LeaseStore(parse_store_url(pg_schema))
    run_id = uuid.uuid4()
    claimer.enqueue(run_id, "wf", DEFAULT_QUEUE)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, pg_schema], text=True,
                              stdout=subprocess.PIPE, env=child_env())
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().split() == ["claimed", str(run_id)]
        yield claimer, holder, run_id
    finally:
        holder.send_signal(signal.SIGCONT)
        holder.kill()
        holder.wait(30)
        claimer.close()
        others.close()


def test_a_dead_holders_lease_is_claimed_without_waiting_for_it_to_expire(held: tuple) -> None:
    claimer, holder, run_id = held
    assert claimer.claim("b", None, 1, LEASE) == []  # alive: its lease holds
    holder.kill()
    assert holder.wait(30) == -signal.SIGKILL
    claims: list = []
    wait_until(lambda: claims.extend(claimer.claim("b", None, 1, LEASE)) or claims,
               "the dead holder's run to be claimable")
    assert (claims[0].run_id, claims[0].taken_from, claims[0].takeovers) == (run_id, "holder", 1)


def test_a_dead_holders_run_can_be_resumed_by_name_at_once(held: tuple) -> None:
    claimer, holder, run_id = held
    assert claimer.claim_run(run_id, "me", LEASE, workflow="wf", queue=DEFAULT_QUEUE) == "holder"
    holder.kill()
    holder.wait(30)
    wait_until(
        lambda: claimer.claim_run(run_id, "me", LEASE, workflow="wf", queue=DEFAULT_QUEUE)
        is None,
        "the dead holder's run to be taken by name",
    )
    row = claimer.row(run_id)
    assert row is not None
    assert row.lease_owner == "me"


def test_a_paused_holder_keeps_its_lease_until_it_expires(held: tuple) -> None:
    claimer, holder, run_id = held
    holder.send_signal(signal.SIGSTOP)  # paused, not dead: its session stays open
    assert claimer.claim("b", None, 1, LEASE) == []
    assert claimer.claim_run(run_id, "me", LEASE, workflow="wf", queue=DEFAULT_QUEUE) == "holder"
    # Expiry still ends it: a claim from a clock past the lease takes it over.
    late = LeaseStore(claimer.location, clock=lambda: claimer.clock() + LEASE + 1)
    try:
        [claim] = late.claim("b", None, 1, LEASE)
        assert (claim.run_id, claim.taken_from) == (run_id, "holder")
    finally:
        late.close()
