"""Shared tables: every tenant's rows in the same tables, keyed by ``tenant_id``.

Two walls: the ORM filter (criteria on every SELECT/UPDATE/DELETE, stamping on
INSERT; see :mod:`tenantry.tenancy.session`) and, on PostgreSQL, row-level security
enforced by the server for everything, raw SQL included.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, MetaData, delete, inspect, select
from sqlalchemy.ext.asyncio import AsyncEngine

from tenantry.tenancy.catalog import IsolationMode
from tenantry.tenancy.isolation import postgres as pg
from tenantry.tenancy.models import TENANT_ID_COLUMN, is_tenant_table
from tenantry.tenancy.store import Store

if TYPE_CHECKING:
    from tenantry.tenancy.hooks import VersionHistory

_prepare_lock = threading.Lock()


class SharedIsolation:
    mode = IsolationMode.SHARED
    filters_rows = True
    own_database = False
    shares_tables = True

    def data_schema(self, tenant_id: str) -> str | None:
        return None

    def check_supported(self, store: Store) -> None:
        return None

    def engine(self, store: Store, tenant_id: str) -> Engine:
        return pg.bound(store.engine(), store, tenant_id, "public")

    def async_engine(self, store: Store, tenant_id: str) -> AsyncEngine:
        return pg.bound(store.async_engine(), store, tenant_id, "public")

    def admin_engine(self, store: Store, tenant_id: str) -> Engine:
        return pg.bound(store.admin_engine(), store, tenant_id, "public")

    def prepare_store(
        self, store: Store, metadata: MetaData, history: VersionHistory | None = None
    ) -> None:
        """Create the shared tables (and RLS policies) once per store and process.

        Tables created here from the models are at the tenant history's head,
        and recorded so; tables that existed already without a version table
        are left unrecorded (``tenantry migrate stamp`` adopts them).
        """
        with _prepare_lock:
            if store.prepared_shared_tables:
                return
            if store.is_postgres:
                store.prepare_wall()  # the policies call its functions
            # On SQLite the transaction starts as a write (BEGIN IMMEDIATE): create_all
            # reads the schema before it writes, and a plain BEGIN would be refused
            # ("database is locked") if another connection committed in between.
            engine = store.admin_engine().execution_options(sqlite_begin="BEGIN IMMEDIATE")
            with engine.begin() as conn:
                if store.is_postgres:
                    # Serialise concurrent preparers across processes.
                    pg.ddl_lock(conn)
                existing = set(inspect(conn).get_table_names())
                fresh = not existing & {t.name for t in metadata.sorted_tables}
                metadata.create_all(conn, checkfirst=True)
                if fresh and history is not None and history.current(conn, None) is None:
                    history.stamp(conn, None)
                if store.is_postgres:
                    pg.enable_rls(conn, metadata, None)
                    pg.grant_access(conn, "public", store.session_grantee)
            store.prepared_shared_tables = True
        store.hooks.store_ready(store)

    def leftover(self, store: Store, tenant_id: str, metadata: MetaData) -> str | None:
        tables = [
            t for t in metadata.sorted_tables if is_tenant_table(t) and TENANT_ID_COLUMN in t.c
        ]
        # As the tenant: the admin may be subject to FORCE RLS.
        with self.admin_engine(store, tenant_id).connect() as conn:
            existing = set(inspect(conn).get_table_names())
            for table in tables:
                if table.name not in existing:
                    continue
                row = conn.execute(
                    select(table.c[TENANT_ID_COLUMN])
                    .where(table.c[TENANT_ID_COLUMN] == tenant_id)
                    .limit(1)
                ).first()
                if row is not None:
                    return f"rows with tenant_id={tenant_id!r} in {table.name!r}"
            conn.rollback()
        return None

    def provision(
        self,
        store: Store,
        tenant_id: str,
        metadata: MetaData,
        *,
        history: VersionHistory | None = None,
    ) -> None:
        self.prepare_store(store, metadata, history)

    def deprovision(self, store: Store, tenant_id: str, metadata: MetaData) -> None:
        self.prepare_store(store, metadata)
        with self.admin_engine(store, tenant_id).begin() as conn:
            _delete_rows(conn, tenant_id, metadata)
            # What else of the tenant's lives here goes with its rows, in this transaction.
            store.hooks.tenant_data_dropped(conn, store, tenant_id)

    def drop_tables(self, store: Store, tenant_id: str, metadata: MetaData) -> None:
        with self.admin_engine(store, tenant_id).begin() as conn:
            _delete_rows(conn, tenant_id, metadata)


def _delete_rows(conn: Connection, tenant_id: str, metadata: MetaData) -> None:
    """Delete the tenant's rows (on a connection bound to the tenant: FORCE RLS holds)."""
    for table in reversed(metadata.sorted_tables):
        if is_tenant_table(table) and TENANT_ID_COLUMN in table.c:
            conn.execute(delete(table).where(table.c[TENANT_ID_COLUMN] == tenant_id))
