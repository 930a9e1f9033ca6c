"""One process at a time moves a tenant.

Two runs of the same move (an operator resuming while the first still runs)
would copy, switch and clean up against each other. A lock held for the
whole run refuses the second one. It is released when its holder dies, so a
crashed move can be resumed at once:

* PostgreSQL catalog: a session-level advisory lock on the catalog database;
* SQLite catalog: an OS file lock beside the catalog file (``filelock``:
  ``flock`` on POSIX, ``LockFileEx`` on Windows), never a marker file that a
  crash would leave behind.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout
from sqlalchemy import Engine

from tenantry.errors import MoveError


@contextmanager
def exclusive(catalog: Engine, tenant_id: str) -> Iterator[None]:
    """Hold the move lock of *tenant_id* on the *catalog* database, or refuse."""
    if catalog.dialect.name == "postgresql":
        with _advisory_lock(catalog, tenant_id):
            yield
        return
    database = catalog.url.database
    if not database or database == ":memory:":
        yield  # one process owns an in-memory catalog
        return
    path = Path(database).with_name(f"{Path(database).name}.move-{tenant_id}.lock")
    # A fallback to a marker file would outlive a crashed holder: refuse instead.
    lock = FileLock(path, blocking=False, fallback_to_soft=False)
    try:
        lock.acquire()
    except Timeout:
        raise _refused(tenant_id) from None
    try:
        yield
    finally:
        lock.release()


@contextmanager
def _advisory_lock(catalog: Engine, tenant_id: str) -> Iterator[None]:
    with catalog.connect() as conn:
        key = f"tenantry.move:{tenant_id}"
        got = conn.exec_driver_sql(
            "SELECT pg_try_advisory_lock(hashtextextended(%(k)s, 0))", {"k": key}
        ).scalar()
        conn.commit()
        if not got:
            raise _refused(tenant_id)
        try:
            yield
        finally:
            conn.exec_driver_sql(
                "SELECT pg_advisory_unlock(hashtextextended(%(k)s, 0))", {"k": key}
            )
            conn.commit()


def _refused(tenant_id: str) -> MoveError:
    return MoveError(f"tenant {tenant_id!r} is being moved by another process")
