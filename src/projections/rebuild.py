"""Drop and rebuild: a view is replayed from the log into shadow tables, then swapped in.

Readers never see a half-built view. The shadow (`<table>__rebuild`, with its own tracking
record) is filled batch by batch while the live view keeps serving and keeps being updated.
Once the shadow is near the head, one transaction holding both views' locks applies the last
events up to the head read inside it, drops the live tables, renames the shadow's into their
place and moves the shadow's tracking record onto the live key. On SQLite that transaction
holds the database's write lock, so the head cannot move under it; on PostgreSQL events
written after the head was read are applied by the next batch, as for any view.

A rebuild that dies leaves only shadow tables behind, which the next rebuild drops first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING
from uuid import uuid4

from engine.storage import TYPES
from projections.errors import UnknownViewError, ViewSchemaError
from projections.facts import decode_rows
from projections.sql import Bound, Tx
from projections.view import View

if TYPE_CHECKING:
    from projections.projector import Progress, Projector

_APPROACHES = 3
_SWAP_GAP = 2000
"""At most about this many events are left for the swap's transaction to apply (whatever the
batch size), so the time readers and writers of the views wait for it stays short."""


def ensure_tables(projector: Projector, views: Sequence[View]) -> None:
    """Create missing view tables; a view missing any table starts again from position 0."""
    db = projector.db
    with db.transaction([v.lock_name for v in views], ddl=True) as tx:
        for view in views:
            found = [columns(tx, t.name) for t in view.bound]
            for table, names in zip(view.bound, found, strict=True):
                if names and tuple(names) != table.spec.column_names:
                    raise ViewSchemaError(view.name, table.name)
            if not all(found):
                reset(tx, view)


def reset(tx: Tx, view: View, *, indexes: bool = True) -> None:
    """Empty tables and no tracking record: the view will be replayed from the start."""
    for table in view.bound:
        drop(tx, table.name)
        create(tx, table, indexes=indexes)
    forget(tx, view.tracking_key)


def rebuild(projector: Projector, name: str | None, *, progress: Progress | None = None) -> int:
    """Rebuild one view (all when `name` is None); returns the position they were swapped at."""
    views = [v for v in projector.views if name is None or v.name == name]
    if not views:
        raise UnknownViewError(name or "", [v.name for v in projector.views])
    shadows = [view.shadow_of() for view in views]
    with projector.db.transaction([s.lock_name for s in shadows], ddl=True) as tx:
        for shadow in shadows:
            # The secondary indexes come once the bulk is in: built by one sort each, where
            # kept up row by row they cost a random B-tree write per row and index.
            reset(tx, shadow, indexes=False)
    size = projector.rebuild_batch_size
    position = projector.catch_up_views(shadows, progress=progress, batch_size=size,
                                        finish=False)
    with projector.db.transaction([s.lock_name for s in shadows], ddl=True) as tx:
        for shadow in shadows:
            for table in shadow.bound:
                create_indexes(tx, table)
    for _ in range(_APPROACHES):
        # Writers kept going: come closer to the head before taking the views' locks, so the
        # swap's transaction (which readers of the live tables wait for) stays short.
        head = projector.head()
        if head - position <= _SWAP_GAP:
            break
        position = projector.catch_up_views(shadows, progress=progress, until=head,
                                            batch_size=size)
    return _swap(projector, views, shadows, progress)


def _swap(
    projector: Projector, views: list[View], shadows: list[View], progress: Progress | None
) -> int:
    db, reader = projector.db, projector.store.reader
    locks = [v.lock_name for v in views + shadows]
    with db.transaction(locks, ddl=True) as tx:
        head = projector.head()
        keys = tx.positions([s.tracking_key for s in shadows])
        positions = {s.name: keys[s.tracking_key] for s in shadows}
        while (start := min(positions.values())) < head:
            with db.translated():
                rows = reader.rows_after(start, head, limit=_SWAP_GAP)
            if not rows:
                break
            facts, error = decode_rows(rows, projector.store.mapper)
            if error is not None:
                raise error  # nothing is swapped: the live views stay as they were
            positions = projector.apply_in(tx, shadows, facts, start)
        projector.finish_in(tx, shadows)
        for view, shadow in zip(views, shadows, strict=True):
            for live, built in zip(view.bound, shadow.bound, strict=True):
                drop(tx, live.name)
                rename(tx, built.name, live.name)
            forget(tx, view.tracking_key)
            rekey(tx, shadow.tracking_key, view.tracking_key)
    for view in views:
        view.unfinished = False
    position = min(positions.values())
    if progress is not None:
        progress(position, max(head, position))
    return position


# -- DDL, inside a transaction holding the views' locks ---------------------------------------
def columns(tx: Tx, name: str) -> list[str]:
    """The table's column names, or [] when there is no such table."""
    if tx.db.is_sqlite:
        return [row[1] for row in tx.fetch(f'PRAGMA table_info("{name}")')]
    rows = tx.fetch(
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = ? AND table_name = ? ORDER BY ordinal_position",
        (tx.db.schema, name),
    )
    return [row[0] for row in rows]


def create(tx: Tx, table: Bound, *, indexes: bool = True) -> None:
    side = 0 if tx.db.is_sqlite else 1
    cols = ", ".join(f"{n} {TYPES[t][side]}" for n, t in table.spec.columns)
    # One B-tree per table on SQLite: a view's random run-id keys dirty one page per row in
    # it, rather than one in the rowid table and one in the key's index.
    tail = " WITHOUT ROWID" if tx.db.is_sqlite else ""
    key = ", ".join(table.spec.key)
    tx.execute(f"CREATE TABLE {table.qname} ({cols}, PRIMARY KEY ({key})){tail}")
    if indexes:
        create_indexes(tx, table)


def create_indexes(tx: Tx, table: Bound) -> None:
    for index in table.spec.indexes:
        # Index names are unique per schema and survive a table's rename: a fresh token keeps
        # a rebuilt table's indexes from colliding with the live table's. (PostgreSQL cuts
        # names at 63 bytes: the token must survive.)
        ix = f"{table.name[:40]}_{'_'.join(index)[:12]}_{uuid4().hex[:8]}"
        tx.execute(f'CREATE INDEX "{ix}" ON {table.qname} ({", ".join(index)})')


def drop(tx: Tx, name: str) -> None:
    tx.execute(f"DROP TABLE IF EXISTS {tx.db.q(name)}")


def rename(tx: Tx, old: str, new: str) -> None:
    tx.execute(f'ALTER TABLE {tx.db.q(old)} RENAME TO "{new}"')


def forget(tx: Tx, key: str) -> None:
    tx.execute(f"DELETE FROM {tx.db.tracking_table} WHERE application_name = ?", (key,))


def rekey(tx: Tx, old: str, new: str) -> None:
    tx.execute(
        f"UPDATE {tx.db.tracking_table} SET application_name = ? WHERE application_name = ?",
        (new, old),
    )
