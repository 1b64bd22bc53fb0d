"""Every PostgreSQL advisory-lock key Stepstone takes, in one place, so two never collide.

Session and transaction locks share one key space per database; the keys below are fixed
numbers, and view locks are hashed from the schema and the view's name.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

from engine.storage.location import StoreLocation

CLAIM_LOCK_KEY = 0x5E5E_0001
"""Transaction lock: claims of runnable runs are serialized per database, so concurrency
limits hold across workers."""

SCHEMA_LOCK_KEY = 0x5E5E_0002
"""Creating the log's and the index's tables: processes starting together take turns."""


def view_lock_key(schema: str, view: str) -> int:
    """The transaction lock of one view's writes (a projector batch, a rebuild's swap)."""
    digest = hashlib.blake2b(f"{schema}.{view}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


@contextmanager
def schema_lock(location: StoreLocation) -> Iterator[None]:
    """Connect directly first, then hold the schema lock while tables are created.

    Connecting directly gives the real cause of a failure (a pool would only say it timed
    out). The lock serializes the library's CREATE TABLE / CREATE OR REPLACE FUNCTION between
    processes starting together (a pool of workers), which PostgreSQL otherwise fails with
    "tuple concurrently updated" or a duplicate catalog key.
    """
    import psycopg  # only PostgreSQL stores pay for the driver's import

    with psycopg.connect(**location.connect_kwargs("schema"), autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (SCHEMA_LOCK_KEY,))
        try:
            yield
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (SCHEMA_LOCK_KEY,))
