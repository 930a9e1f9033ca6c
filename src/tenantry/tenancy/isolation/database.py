"""Database per tenant: a PostgreSQL database on the store's server, or a SQLite file.

The strongest isolation and the easiest to back up or move, at the price of a
connection pool per tenant; the store keeps those pools in a bounded LRU.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, MetaData, inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine

from tenantry.tenancy.catalog import IsolationMode
from tenantry.tenancy.isolation import postgres as pg
from tenantry.tenancy.isolation.wall import ensure_database_wall
from tenantry.tenancy.provisioning import tenant_ddl
from tenantry.tenancy.store import Store

if TYPE_CHECKING:
    from tenantry.tenancy.hooks import VersionHistory


class DatabaseIsolation:
    mode = IsolationMode.DATABASE
    filters_rows = False
    own_database = True
    shares_tables = False

    def data_schema(self, tenant_id: str) -> str | None:
        return None

    def check_supported(self, store: Store) -> None:
        store.tenant_database_name("check")  # raises for in-memory SQLite

    def engine(self, store: Store, tenant_id: str) -> Engine:
        return pg.bound(store.tenant_engine(tenant_id), store, tenant_id, "public")

    def async_engine(self, store: Store, tenant_id: str) -> AsyncEngine:
        return pg.bound(store.tenant_async_engine(tenant_id), store, tenant_id, "public")

    def admin_engine(self, store: Store, tenant_id: str) -> Engine:
        return pg.bound(store.tenant_admin_engine(tenant_id), store, tenant_id, "public")

    def leftover(self, store: Store, tenant_id: str, metadata: MetaData) -> str | None:
        name = store.tenant_database_name(tenant_id)
        if not store.is_postgres:
            return f"database file {name}" if os.path.exists(name) else None
        with store.admin_engine().connect() as conn:
            found = conn.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}
            ).first()
        return None if found is None else f"database {name!r}"

    def provision(
        self,
        store: Store,
        tenant_id: str,
        metadata: MetaData,
        *,
        history: VersionHistory | None = None,
    ) -> None:
        name = store.tenant_database_name(tenant_id)
        if store.is_postgres:
            self._create_pg_database(store, name)
        engine = store.tenant_admin_engine(tenant_id)
        try:
            with engine.begin() as conn:
                if store.is_postgres:
                    # The store's key and functions first: the policies call them.
                    ensure_database_wall(conn, store)
                if not inspect(conn).get_table_names():
                    # A new database: the compiled script, one round trip on PostgreSQL.
                    tenant_ddl(metadata, store.dialect, history).run(conn, None)
                else:
                    # Resuming an interrupted run: idempotent, statement by statement.
                    metadata.create_all(conn, checkfirst=True)
                    if history is not None and history.current(conn, None) is None:
                        history.stamp(conn, None)
                if store.is_postgres:
                    pg.enable_rls(conn, metadata, None, tenant_id)
                store.hooks.database_ready(conn, store)
                if store.is_postgres:
                    pg.grant_access(conn, "public", store.session_grantee)
        finally:
            engine.dispose()

    def _create_pg_database(self, store: Store, name: str) -> None:
        # CREATE DATABASE cannot run in a transaction block, hence AUTOCOMMIT.
        engine = store.admin_engine().execution_options(isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            exists = conn.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}
            ).first()
            if exists is None:
                conn.exec_driver_sql(f"CREATE DATABASE {pg.quote(conn, name)}")

    def deprovision(self, store: Store, tenant_id: str, metadata: MetaData) -> None:
        name = store.tenant_database_name(tenant_id)
        store.forget_tenant_engines(tenant_id)
        try:
            if store.is_postgres:
                engine = store.admin_engine().execution_options(isolation_level="AUTOCOMMIT")
                with engine.connect() as conn:
                    conn.exec_driver_sql(
                        f"DROP DATABASE IF EXISTS {pg.quote(conn, name)} WITH (FORCE)"
                    )
                return
            for suffix in ("", "-wal", "-shm", "-journal"):
                path = Path(name + suffix)
                if path.exists():
                    os.remove(path)
        finally:
            # Again once the database is gone: a worker's thread may have made a
            # new engine in between and connected to it. Cached, that engine kept
            # its connection to the removed SQLite file open, and a database made
            # later under the same name was read through it: the old rows.
            store.forget_tenant_engines(tenant_id)

    def drop_tables(self, store: Store, tenant_id: str, metadata: MetaData) -> None:
        self.deprovision(store, tenant_id, metadata)
