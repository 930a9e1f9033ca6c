"""Schema per tenant (PostgreSQL): the same tables, once in each tenant's schema.

Sessions are pointed at the schema with ``schema_translate_map`` on an engine
(not on a connection: SQLAlchemy drops connection-level options when a
session returns its connection to the pool), so no session-level
``search_path`` ever sticks to a pooled connection. Raw ``text()`` SQL, which
the translate map cannot see, gets the schema through a transaction-local
``search_path`` set at BEGIN.
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, TypeVar

from sqlalchemy import Engine, MetaData, text
from sqlalchemy.ext.asyncio import AsyncEngine

from tenantry.errors import UnsupportedIsolation
from tenantry.tenancy.catalog import IsolationMode
from tenantry.tenancy.ids import validate_identifier, validate_tenant_id
from tenantry.tenancy.isolation import postgres as pg
from tenantry.tenancy.logs import get_logger
from tenantry.tenancy.models import TENANT_SCHEMA, TENANTRY_SCHEMA
from tenantry.tenancy.provisioning import tenant_ddl
from tenantry.tenancy.store import Store

if TYPE_CHECKING:
    from tenantry.tenancy.hooks import VersionHistory

SCHEMA_PREFIX = "t_"

log = get_logger(__name__)
E = TypeVar("E", Engine, AsyncEngine)
_prepared: weakref.WeakSet[Store] = weakref.WeakSet()
_prepared_lock = threading.Lock()


def schema_name(tenant_id: str) -> str:
    return validate_identifier(SCHEMA_PREFIX + validate_tenant_id(tenant_id), "schema")


class SchemaIsolation:
    mode = IsolationMode.SCHEMA
    filters_rows = False
    own_database = False
    shares_tables = False

    def data_schema(self, tenant_id: str) -> str | None:
        return schema_name(tenant_id)

    def check_supported(self, store: Store) -> None:
        if not store.is_postgres:
            raise UnsupportedIsolation(
                f"schema-per-tenant isolation needs PostgreSQL; store {store.name!r} is "
                f"{store.dialect}. Use 'database' (one file per tenant) or 'shared' instead."
            )

    def _translate(self, tenant_id: str) -> dict[str | None, str | None]:
        return {TENANT_SCHEMA: schema_name(tenant_id), TENANTRY_SCHEMA: TENANTRY_SCHEMA}

    def _bound(self, engine: E, store: Store, tenant_id: str) -> E:
        self.check_supported(store)
        path = f'"{schema_name(tenant_id)}", public'
        return pg.bound(
            engine, store, tenant_id, path, schema_translate_map=self._translate(tenant_id)
        )

    def engine(self, store: Store, tenant_id: str) -> Engine:
        return self._bound(store.engine(), store, tenant_id)

    def async_engine(self, store: Store, tenant_id: str) -> AsyncEngine:
        return self._bound(store.async_engine(), store, tenant_id)

    def admin_engine(self, store: Store, tenant_id: str) -> Engine:
        return self._bound(store.admin_engine(), store, tenant_id)

    def leftover(self, store: Store, tenant_id: str, metadata: MetaData) -> str | None:
        self.check_supported(store)
        with store.admin_engine().connect() as conn:
            found = conn.execute(
                text("SELECT 1 FROM pg_namespace WHERE nspname = :n"),
                {"n": schema_name(tenant_id)},
            ).first()
        return None if found is None else f"schema {schema_name(tenant_id)!r}"

    def provision(
        self,
        store: Store,
        tenant_id: str,
        metadata: MetaData,
        *,
        history: VersionHistory | None = None,
    ) -> None:
        self.check_supported(store)
        schema = schema_name(tenant_id)
        self._prepare_store(store)
        admin = store.admin_engine().execution_options(
            schema_translate_map=self._translate(tenant_id)
        )
        with admin.begin() as conn:
            exists = conn.execute(
                text("SELECT 1 FROM pg_namespace WHERE nspname = :n"), {"n": schema}
            ).first()
            if exists is None:
                # The usual case: a new schema, made by one script in one round trip.
                q = pg.quote(conn, schema)
                grants = pg.schema_grants(conn, schema, store.session_grantee)
                ddl = tenant_ddl(metadata, "postgresql", history)
                log.debug("provisioning schema %s from the compiled script", schema)
                ddl.run(
                    conn,
                    q,
                    prologue=[f"CREATE SCHEMA {q}"],
                    epilogue=[*grants, *pg.tenant_policies(conn, metadata, schema, tenant_id)],
                )
                return
            # Resuming an interrupted run: idempotent, statement by statement.
            log.debug("provisioning schema %s step by step (it exists already)", schema)
            metadata.create_all(conn, checkfirst=True)
            pg.grant_access(conn, schema, store.session_grantee)
            pg.enable_rls(conn, metadata, schema, tenant_id)
            if history is not None and history.current(conn, schema) is None:
                history.stamp(conn, schema)

    def _prepare_store(self, store: Store) -> None:
        """What every schema tenant of a store needs once: grants on public, the hooks' tables.

        Done once per process and store, so that provisioning a tenant sends
        only its own script.
        """
        with _prepared_lock:
            if store in _prepared:
                return
            store.prepare_wall()  # the policies call its functions
            with store.admin_engine().begin() as conn:
                # Global tables live in public; tenant sessions may read them.
                pg.grant_access(conn, "public", store.session_grantee)
            store.hooks.store_ready(store)
            _prepared.add(store)

    def deprovision(self, store: Store, tenant_id: str, metadata: MetaData) -> None:
        self.check_supported(store)
        store.hooks.store_ready(store)
        with store.admin_engine().begin() as conn:
            conn.exec_driver_sql(
                f"DROP SCHEMA IF EXISTS {pg.quote(conn, schema_name(tenant_id))} CASCADE"
            )
            # What else of the tenant's lives in the store's database goes too.
            store.hooks.tenant_data_dropped(conn, store, tenant_id)

    def drop_tables(self, store: Store, tenant_id: str, metadata: MetaData) -> None:
        with store.admin_engine().begin() as conn:
            conn.exec_driver_sql(
                f"DROP SCHEMA IF EXISTS {pg.quote(conn, schema_name(tenant_id))} CASCADE"
            )
