"""Stores: engines for one database server (or SQLite location), built lazily.

A store makes engines of three kinds, kept by role in its ``StoreEngines``:

* the *app* engine (``url``), which tenant sessions use;
* the *admin* engine (``admin_url``), for the catalog, DDL and provisioning;
* one engine per database-per-tenant database, kept in a bounded LRU so a
  thousand tenants never mean a thousand open pools.

Other packages (the queue) make engines of their own roles through
``url``, ``make_engine`` and ``make_async_engine``, kept and disposed here
with the rest.

Secrets in URLs are expanded here, at engine creation, and nowhere else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from tenantry.errors import ConfigError, IsolationError, UnsupportedIsolation
from tenantry.tenancy.binding import Binder, bind_transactions, clean_between_users
from tenantry.tenancy.config import StoreConfig
from tenantry.tenancy.engines import (
    ADMIN,
    APP,
    ASYNC_APP,
    EngineRole,
    StoreEngines,
    aretire,
    retire,
)
from tenantry.tenancy.hooks import NO_HOOKS, TenantHooks
from tenantry.tenancy.ids import validate_identifier, validate_tenant_id
from tenantry.tenancy.logs import get_logger
from tenantry.tenancy.models import TENANT_SCHEMA, TENANTRY_SCHEMA
from tenantry.tenancy.session import UNGUARDED
from tenantry.tenancy.sqlite_guard import install_guard
from tenantry.tenancy.urls import ASYNC_DRIVERS, SUPPORTED_DIALECTS, SYNC_DRIVERS, driver_note

log = get_logger(__name__)
E = TypeVar("E", Engine, AsyncEngine)

#: Tenant sessions on a tenant's own database (``url``, the database swapped).
TENANT_APP: EngineRole[Engine] = EngineRole("tenant app")
#: DDL and queue operations on a tenant's own database (``admin_url``).
TENANT_ADMIN: EngineRole[Engine] = EngineRole("tenant admin")
#: Async tenant sessions on a tenant's own database.
TENANT_ASYNC_APP: EngineRole[AsyncEngine] = EngineRole("tenant async app", is_async=True)


def _sqlite_connect_hooks(engine: Engine, *, tenant_tables: bool = True) -> None:
    """WAL, a busy timeout, real transactions and the guard for SQLite.

    pysqlite's own transaction handling defers BEGIN and never emits it for
    reads; tenantry needs ``BEGIN`` (and, for the queue, ``BEGIN IMMEDIATE``)
    under its control, so the driver's handling is switched off and SQLAlchemy's
    ``begin`` event emits it (the recipe from SQLAlchemy's SQLite docs).

    The guard (:mod:`tenantry.tenancy.sqlite_guard`) refuses ``ATTACH`` and,
    with *tenant_tables* (the store's database, which holds shared tenants),
    statements reaching tenant tables without tenantry's filter.
    """
    install_guard(engine, guard_tables=tenant_tables)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=10000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "BEGIN")
        conn.exec_driver_sql(mode)


class Store:
    """Engines for one store; cheap to build, connects only when first used."""

    def __init__(self, config: StoreConfig, hooks: TenantHooks = NO_HOOKS) -> None:
        self.config = config
        #: What the composition root registered to run beside tenant storage.
        self.hooks = hooks
        self.name = config.name
        self.dialect = config.dialect
        if self.dialect not in SUPPORTED_DIALECTS:
            raise ConfigError(
                f"store {self.name!r}: unsupported database {self.dialect!r} "
                f"(supported: {', '.join(sorted(SUPPORTED_DIALECTS))})"
            )
        self._note_drivers()
        #: Every engine this store made, by role.
        self.engines = StoreEngines(config.max_tenant_engines)
        self.prepared_shared_tables = False
        #: The tenant binding's key holder, once the wall is prepared (PostgreSQL).
        self.binder: Binder | None = None

    def _note_drivers(self) -> None:
        """Say once, when a URL names a driver that tenantry replaces by its own (psycopg 3)."""
        urls = [self.config.parsed_url(expand=False)]
        if self.config.admin_url is not None:
            urls.append(self.config.parsed_url(admin=True, expand=False))
        for note in sorted({n for n in map(driver_note, urls) if n is not None}):
            log.warning("store %r: %s", self.name, note)

    # -- helpers ------------------------------------------------------------
    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    @property
    def translate_map(self) -> dict[str | None, str | None]:
        """Schema translation for this store's own database (shared mode)."""
        return {TENANT_SCHEMA: None, TENANTRY_SCHEMA: TENANTRY_SCHEMA if self.is_postgres else None}

    @property
    def has_admin_url(self) -> bool:
        return self.config.admin_url is not None

    # -- who tenant sessions are (PostgreSQL) -------------------------------------
    @property
    def owns_session_login(self) -> bool:
        """Whether tenantry creates the session login (one URL: it is the admin's)."""
        return self.is_postgres and not self.has_admin_url

    @property
    def session_login(self) -> str:
        """The login tenant and global sessions connect as."""
        if not self.owns_session_login:
            return self.config.parsed_url().username or ""
        role = self.config.rls_role
        if not role:
            raise IsolationError(
                f'store {self.name!r}: with rls_role = "" and no admin_url, tenant sessions '
                "would run as the login that owns the tables, which can switch row-level "
                "security off; keep rls_role (tenantry then creates a session login) or set "
                "admin_url to the owner and url to a login that owns nothing"
            )
        from tenantry.tenancy.isolation.wall import session_login_name

        return session_login_name(role, self.config.parsed_url(expand=False).database or "")

    @property
    def session_grantee(self) -> str:
        """The role tenant tables are granted to: the session login, or ``rls_role``."""
        if self.has_admin_url and self.config.rls_role:
            return self.config.rls_role
        return self.session_login

    def prepare_wall(self) -> Binder:
        """The binding key and the session login, set up once per process (PostgreSQL)."""
        if self.binder is not None:
            return self.binder
        from tenantry.tenancy.isolation.wall import prepare

        return prepare(self)

    def url(
        self,
        *,
        admin: bool,
        is_async: bool,
        database: str | None = None,
        must_exist: bool = False,
    ) -> URL:
        """The URL of an engine on this store (*database*: a tenant's own), secrets expanded."""
        url = self.config.parsed_url(admin=admin)
        if not admin and self.owns_session_login:
            login = self.session_login
            url = url.set(username=login, password=self.prepare_wall().login_password(login))
        drivers = ASYNC_DRIVERS if is_async else SYNC_DRIVERS
        url = url.set(drivername=drivers[self.dialect])
        if database is not None:
            url = url.set(database=database)
        if self.dialect == "sqlite" and url.database not in (None, "", ":memory:"):
            if must_exist:
                # A tenant's database file is created by provisioning only: a
                # worker or session reaching a deleted tenant's path must fail,
                # not leave an empty file that blocks re-creating the tenant.
                return url.set(database=f"file:{url.database}", query={"mode": "rw", "uri": "true"})
            Path(url.database or "").parent.mkdir(parents=True, exist_ok=True)
        return url

    def _pool_options(self, small: bool, ping: bool = True) -> dict[str, Any]:
        # Tenant-database pools stay tiny: max_tenant_engines of them may be open.
        size, overflow = (1, 2) if small else (self.config.pool_size, self.config.pool_size)
        return {"pool_size": size, "max_overflow": overflow, "pool_pre_ping": ping}

    def _driver_options(self, kw: dict[str, Any]) -> dict[str, Any]:
        """*kw* for ``create_engine``, plus what psycopg needs behind a transaction pooler.

        A transaction-mode pooler (``pooler = "transaction"``) runs each
        transaction on whichever server connection is free: a statement
        psycopg prepared on one is missing on the next (or its name is taken
        by another client's), so preparing is turned off (``prepare_threshold``
        None) on every connection of every engine of such a store.
        """
        if not (self.is_postgres and self.config.transaction_pooled):
            return kw
        connect_args = {**kw.get("connect_args", {}), "prepare_threshold": None}
        return {**kw, "connect_args": connect_args}

    def make_engine(self, url: URL, *, small: bool = False, ping: bool = True, **kw: Any) -> Engine:
        """A new engine with this store's pool sizes, SQLite set-up and schema translation.

        *small*: a tenant database's pool. *ping*: SQLAlchemy's pre-ping on
        checkout (PostgreSQL). *kw* goes to ``create_engine`` (PostgreSQL).
        """
        if self.dialect == "sqlite":
            engine = create_engine(url, **kw)
            _sqlite_connect_hooks(engine, tenant_tables=not small)
        else:
            engine = create_engine(
                url, **self._pool_options(small, ping), **self._driver_options(kw)
            )
            bind_transactions(engine)
        return engine.execution_options(schema_translate_map=self.translate_map)

    def make_async_engine(
        self, url: URL, *, small: bool = False, ping: bool = True, **kw: Any
    ) -> AsyncEngine:
        """``make_engine`` for an async engine."""
        if self.dialect == "sqlite":
            engine = create_async_engine(url)
            _sqlite_connect_hooks(engine.sync_engine, tenant_tables=not small)
        else:
            engine = create_async_engine(
                url, **self._pool_options(small, ping), **self._driver_options(kw)
            )
            bind_transactions(engine.sync_engine)
        return engine.execution_options(schema_translate_map=self.translate_map)

    def _sessions(self, engine: E, admin: bool = False) -> E:
        """An engine of tenant and global sessions: cleaned between users (PostgreSQL)."""
        if self.is_postgres and not admin:
            sync = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
            clean_between_users(sync)
        return engine

    # -- the store database -------------------------------------------------
    def engine(self) -> Engine:
        return self.engines.get(
            APP, lambda: self._sessions(self.make_engine(self.url(admin=False, is_async=False)))
        )

    def admin_engine(self) -> Engine:
        """The engine of tenantry's own DDL, catalog, lifecycle and queue work.

        It carries the SQLite guard's opt-out: tenantry's own statements reach
        tenant tables with their own ``WHERE tenant_id = …``.
        """
        if self.config.admin_url is None and not self.is_postgres:
            return self.engines.get(
                ADMIN, lambda: self.engine().execution_options(**{UNGUARDED: True})
            )
        return self.engines.get(
            ADMIN,
            lambda: self.make_engine(self.url(admin=True, is_async=False)).execution_options(
                **{UNGUARDED: True}
            ),
        )

    def pooled_admin_engine(self, size: int) -> Engine:
        """A new admin engine on the store database holding up to *size* connections.

        For bulk operations (migrating every schema with N threads) that must
        not take the admin pool from the catalog. The caller disposes it.
        """
        url = self.url(admin=True, is_async=False)
        if self.dialect == "sqlite":
            return self.make_engine(url).execution_options(**{UNGUARDED: True})
        engine = create_engine(
            url, pool_size=size, max_overflow=0, pool_pre_ping=True, **self._driver_options({})
        )
        bind_transactions(engine)
        return engine.execution_options(schema_translate_map=self.translate_map)

    def async_engine(self) -> AsyncEngine:
        """Async engine on the store database, for tenant and global sessions."""
        return self.engines.get(
            ASYNC_APP,
            lambda: self._sessions(self.make_async_engine(self.url(admin=False, is_async=True))),
        )

    # -- database-per-tenant -------------------------------------------------
    def tenant_database_name(self, tenant_id: str) -> str:
        """The database (PostgreSQL) or file path (SQLite) of a tenant's own database."""
        validate_tenant_id(tenant_id)
        url = self.config.parsed_url(expand=False)
        if self.dialect == "sqlite":
            if url.database in (None, "", ":memory:"):
                raise UnsupportedIsolation(
                    f"store {self.name!r} is an in-memory SQLite database; database-per-tenant "
                    "needs a file-based SQLite store"
                )
            base = Path(url.database or "")
            return str(base.parent / f"{base.stem}_tenants" / f"{tenant_id}.db")
        prefix = self.config.database_prefix
        if prefix is None:
            candidate = f"{url.database or 'tenantry'}_"
            prefix = candidate if len(candidate) <= 23 else "tenantry_"
        return validate_identifier(f"{prefix}{tenant_id}", "database name")

    def tenant_url(self, tenant_id: str, *, admin: bool, is_async: bool = False) -> URL:
        """The URL of a pooled engine on a tenant's existing database."""
        name = self.tenant_database_name(tenant_id)
        return self.url(admin=admin, is_async=is_async, database=name, must_exist=True)

    def tenant_engine(self, tenant_id: str, *, admin: bool = False) -> Engine:
        """Pooled engine on a tenant's own database (LRU-bounded per store)."""
        # One login on SQLite; on PostgreSQL tenant sessions never use the admin's.
        admin = admin and (self.config.admin_url is not None or self.is_postgres)
        self.tenant_database_name(tenant_id)  # refused before anything is cached
        return self.engines.tenant(
            TENANT_ADMIN if admin else TENANT_APP,
            tenant_id,
            lambda: self._sessions(
                self.make_engine(self.tenant_url(tenant_id, admin=admin), small=True), admin
            ),
        )

    def tenant_async_engine(self, tenant_id: str) -> AsyncEngine:
        self.tenant_database_name(tenant_id)  # refused before anything is cached
        return self.engines.tenant(
            TENANT_ASYNC_APP,
            tenant_id,
            lambda: self._sessions(
                self.make_async_engine(
                    self.tenant_url(tenant_id, admin=False, is_async=True), small=True
                )
            ),
        )

    def tenant_admin_engine(self, tenant_id: str) -> Engine:
        """A throwaway (NullPool) admin engine on a tenant database, for DDL."""
        name = self.tenant_database_name(tenant_id)
        url = self.url(admin=True, is_async=False, database=name)
        if self.dialect == "sqlite":
            engine = create_engine(url, poolclass=NullPool)
            _sqlite_connect_hooks(engine, tenant_tables=False)
            return engine.execution_options(
                schema_translate_map=self.translate_map, **{UNGUARDED: True}
            )
        engine = create_engine(url, poolclass=NullPool, **self._driver_options({}))
        bind_transactions(engine)
        return engine.execution_options(schema_translate_map=self.translate_map)

    def forget_tenant_engines(self, tenant_id: str) -> None:
        """Dispose the cached engines of one tenant database (before dropping it)."""
        self.engines.forget_tenant(tenant_id)

    # -- lifecycle --------------------------------------------------------------
    def dispose(self) -> None:
        self.engines.dispose()

    async def adispose(self) -> None:
        """Dispose everything, awaiting the async engines (call from the event loop)."""
        await self.engines.adispose()

    def __repr__(self) -> str:
        return f"Store({self.name!r}, {self.config.masked_url})"


__all__ = ["SUPPORTED_DIALECTS", "Store", "aretire", "retire"]
