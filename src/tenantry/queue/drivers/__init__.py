"""One :class:`QueueDriver` per database dialect, and the jobs table's set-up.

The PostgreSQL driver needs psycopg (the 'postgres' extra), so it is loaded
when a PostgreSQL store first asks for it: SQLite alone needs no psycopg.
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection

from tenantry.errors import ConfigError
from tenantry.queue.drivers.base import (
    ClaimRequest,
    Created,
    Inserted,
    Lease,
    NewJobs,
    QueueDriver,
)
from tenantry.queue.drivers.sqlite import SqliteDriver
from tenantry.tenancy.isolation.postgres import ddl_lock
from tenantry.tenancy.isolation.wall import ensure_database_wall
from tenantry.tenancy.store import Store

if TYPE_CHECKING:
    from tenantry.queue.drivers.postgres.driver import PostgresDriver

_DRIVERS: dict[str, QueueDriver] = {"sqlite": SqliteDriver()}
#: Stores whose own database has its jobs table already (in this process).
_prepared: weakref.WeakSet[Store] = weakref.WeakSet()
_lock = threading.Lock()


def driver_for(dialect: str) -> QueueDriver:
    driver = _DRIVERS.get(dialect)
    if driver is None and dialect == "postgresql":
        from tenantry.queue.drivers.postgres.driver import PostgresDriver

        driver = _DRIVERS.setdefault(dialect, PostgresDriver())
    if driver is None:
        raise ConfigError(f"no queue driver for {dialect!r}")
    return driver


def __getattr__(name: str) -> Any:
    if name == "PostgresDriver":
        from tenantry.queue.drivers.postgres.driver import PostgresDriver

        return PostgresDriver
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def ensure_queue_schema(conn: Connection, store: Store) -> None:
    """Create the jobs table (and on PostgreSQL its grants and RLS) on *conn*'s database."""
    grantee = ""
    if store.is_postgres:
        # The jobs table's policy calls the tenant binding's functions.
        ensure_database_wall(conn, store)
        grantee = store.session_grantee
    driver_for(store.dialect).ensure_schema(conn, grantee)


def ensure_store_queue(store: Store) -> None:
    """The jobs table of the store database itself (shared and schema tenants); once per process."""
    with _lock:
        if store in _prepared:
            return
        # SQLite: a write transaction from the start (BEGIN IMMEDIATE), as for the
        # shared tables: creating the table reads the schema first, and a plain
        # BEGIN is refused its first write if another connection committed since.
        options = driver_for(store.dialect).write_options
        if store.is_postgres:
            store.prepare_wall()  # before taking the DDL lock below: it takes it too
        with store.admin_engine().execution_options(**options).begin() as conn:
            if store.is_postgres:
                ddl_lock(conn)
            ensure_queue_schema(conn, store)
        _prepared.add(store)


__all__ = [
    "ClaimRequest",
    "Created",
    "Inserted",
    "Lease",
    "NewJobs",
    "PostgresDriver",
    "QueueDriver",
    "SqliteDriver",
    "driver_for",
    "ensure_queue_schema",
    "ensure_store_queue",
]
