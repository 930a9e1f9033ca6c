"""Shared tables: every tenant's rows in the same tables, keyed by ``tenant_id``.

Two walls: the ORM filter (criteria on every SELECT/UPDATE/DELETE, stamping on
INSERT; see :mod:`tenantry.tenancy.session`) and, on PostgreSQL, row-level security
enforced by the server for everything, raw SQL included.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, MetaData, delete, inspect, select, text
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
        return store.engine()

    def async_engine(self, store: Store, tenant_id: str) -> AsyncEngine:
        return store.async_engine()

    def admin_engine(self, store: Store, tenant_id: str) -> Engine:
        return store.admin_engine()

    def transaction_setup(self, store: Store, tenant_id: str) -> tuple[str, dict[str, Any]] | None:
        if not store.is_postgres:
            return None
        return pg.session_setup(tenant_id, store.config.rls_role, "public")

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
                    pg.grant_access(conn, "public", store.config.rls_role, store.distinct_app_user)
            store.prepared_shared_tables = True
        store.hooks.store_ready(store)

    def leftover(self, store: Store, tenant_id: str, metadata: MetaData) -> str | None:
        tables = [
            t for t in metadata.sorted_tables if is_tenant_table(t) and TENANT_ID_COLUMN in t.c
        ]
        with store.admin_engine().connect() as conn:
            if store.is_postgres:
                # The admin may be subject to FORCE RLS: look as the tenant.
                sql, params = pg.session_setup(tenant_id, "", "public")
                conn.execute(text(sql), params)
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
        with store.admin_engine().begin() as conn:
            _delete_rows(conn, store, tenant_id, metadata)
            # What else of the tenant's lives here goes with its rows, in this transaction.
            store.hooks.tenant_data_dropped(conn, store, tenant_id)

    def drop_tables(self, store: Store, tenant_id: str, metadata: MetaData) -> None:
        with store.admin_engine().begin() as conn:
            _delete_rows(conn, store, tenant_id, metadata)


def _delete_rows(conn: Connection, store: Store, tenant_id: str, metadata: MetaData) -> None:
    if store.is_postgres:
        # So the delete also works when the admin role is subject to FORCE RLS.
        sql, params = pg.session_setup(tenant_id, "", "public")
        conn.execute(text(sql), params)
    for table in reversed(metadata.sorted_tables):
        if is_tenant_table(table) and TENANT_ID_COLUMN in table.c:
            conn.execute(delete(table).where(table.c[TENANT_ID_COLUMN] == tenant_id))
