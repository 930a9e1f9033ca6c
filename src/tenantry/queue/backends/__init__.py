"""One :class:`QueueBackend` per database dialect."""

from __future__ import annotations

import threading

from sqlalchemy import Connection

from tenantry.errors import ConfigError
from tenantry.queue.backends.base import Inserted, Lease, QueueBackend
from tenantry.queue.backends.postgres import PostgresBackend
from tenantry.queue.backends.sqlite import SqliteBackend
from tenantry.tenancy.isolation.postgres import ddl_lock
from tenantry.tenancy.store import Store

_BACKENDS: dict[str, QueueBackend] = {
    "postgresql": PostgresBackend(),
    "sqlite": SqliteBackend(),
}
_lock = threading.Lock()


def backend_for(dialect: str) -> QueueBackend:
    try:
        return _BACKENDS[dialect]
    except KeyError:
        raise ConfigError(f"no queue backend for {dialect!r}") from None


def ensure_queue_schema(conn: Connection, store: Store) -> None:
    """Create the jobs table (and on PostgreSQL its grants and RLS) on *conn*'s database."""
    backend_for(store.dialect).ensure_schema(conn, store.config.rls_role, store.distinct_app_user)


def ensure_store_queue(store: Store) -> None:
    """The jobs table of the store database itself (shared and schema tenants); once per process."""
    with _lock:
        if store.prepared_queue:
            return
        with store.admin_engine().begin() as conn:
            if store.is_postgres:
                ddl_lock(conn)
            ensure_queue_schema(conn, store)
        store.prepared_queue = True


__all__ = [
    "Inserted",
    "Lease",
    "PostgresBackend",
    "QueueBackend",
    "SqliteBackend",
    "backend_for",
    "ensure_queue_schema",
    "ensure_store_queue",
]
