"""Stores: engines for one database server (or SQLite location), built lazily.

A store owns three kinds of engines:

* the *app* engine (``url``), which tenant sessions use;
* the *admin* engine (``admin_url``), for the catalog, DDL and provisioning;
* one engine per database-per-tenant database, kept in a bounded LRU so a
  thousand tenants never mean a thousand open pools.

Secrets in URLs are expanded here, at engine creation, and nowhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool
from sqlalchemy.util import greenlet_spawn

from tenantry.errors import ConfigError, UnsupportedIsolation
from tenantry.tenancy.config import StoreConfig
from tenantry.tenancy.hooks import NO_HOOKS, TenantHooks
from tenantry.tenancy.ids import validate_identifier, validate_tenant_id
from tenantry.tenancy.isolation.postgres import CLAIM_SESSION_OPTIONS
from tenantry.tenancy.logs import get_logger
from tenantry.tenancy.models import TENANT_SCHEMA, TENANTRY_SCHEMA

log = get_logger(__name__)

E = TypeVar("E")

_SYNC_DRIVERS = {"postgresql": "postgresql+psycopg", "sqlite": "sqlite+pysqlite"}
_ASYNC_DRIVERS = {"postgresql": "postgresql+psycopg", "sqlite": "sqlite+aiosqlite"}
SUPPORTED_DIALECTS = frozenset(_SYNC_DRIVERS)


#: A pooled connection unused for this long is pinged before it is handed out.
PING_AFTER_IDLE = 1.0


def _ping_when_idle(engine: Engine) -> None:
    """Pre-ping only connections that sat idle in the pool (``PING_AFTER_IDLE``).

    Only for standalone enqueues (``Store.enqueue_engine``). SQLAlchemy's
    ``pool_pre_ping`` pings on every checkout, which made such an enqueue two
    round trips instead of one. A connection used within the last second is
    as good as pinged. The one a restart or ``pg_terminate_backend`` broke in
    between fails its statement; SQLAlchemy then sees the disconnect and
    replaces it, and the caller gets ``QueueUnavailableError`` (retry, with an
    idempotency key to be safe), never a silent loss. Sessions keep the full
    pre-ping: a web request after a failover should not fail.
    """

    @event.listens_for(engine, "connect")
    def fresh(dbapi_connection: Any, record: Any) -> None:
        record.info["tenantry_idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkin")
    def returned(dbapi_connection: Any, record: Any) -> None:
        record.info["tenantry_idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        since = record.info.get("tenantry_idle_since")
        if since is not None and time.monotonic() - since < PING_AFTER_IDLE:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            # The pool discards this connection and checks out another one.
            raise DisconnectionError(f"pooled connection is dead: {exc}") from exc


def _sqlite_connect_hooks(engine: Engine) -> None:
    """WAL, a busy timeout and real transactions for SQLite.

    pysqlite's own transaction handling defers BEGIN and never emits it for
    reads; tenantry needs ``BEGIN`` (and, for the queue, ``BEGIN IMMEDIATE``)
    under its control, so the driver's handling is switched off and SQLAlchemy's
    ``begin`` event emits it (the recipe from SQLAlchemy's SQLite docs).
    """

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


class _LRU(Generic[E]):
    """A small thread-safe LRU that disposes what it evicts."""

    def __init__(self, capacity: int, dispose: Callable[[E], None]) -> None:
        self.capacity = capacity
        self._dispose = dispose
        self._items: OrderedDict[str, E] = OrderedDict()
        self._lock = threading.Lock()

    def get_or_create(self, key: str, factory: Callable[[], E]) -> E:
        evicted: list[E] = []
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
                return item
            item = factory()
            self._items[key] = item
            while len(self._items) > self.capacity:
                _, old = self._items.popitem(last=False)
                evicted.append(old)
        for old in evicted:
            self._dispose(old)
        return item

    def pop(self, key: str) -> E | None:
        with self._lock:
            return self._items.pop(key, None)

    def clear(self) -> list[E]:
        with self._lock:
            items = list(self._items.values())
            self._items.clear()
        return items

    def __len__(self) -> int:
        return len(self._items)


def _close_on_return(dbapi_connection: Any, record: Any) -> None:
    record.close()


def retire(engine: Engine) -> None:
    """``Engine.dispose``, and a connection checked out at the time is closed when returned.

    ``dispose`` closes only the connections in the pool. One checked out then
    (a worker's thread in the middle of a query, a tenant database dropped
    under a running worker) goes back to the old pool, which nothing reads
    again: it would stay open until the garbage collector found it. The new
    pool is made first, so the old one gets the closing listener alone.
    """
    old = engine.pool
    engine.pool = old.recreate()
    event.listen(old, "checkin", _close_on_return)
    old.dispose()


async def aretire(engine: AsyncEngine) -> None:
    """``retire`` for an async engine (closing its connections awaits the driver)."""
    await greenlet_spawn(retire, engine.sync_engine)


def _dispose_async(engine: AsyncEngine) -> None:
    """Retire an async engine from sync code, on the loop its connections belong to.

    From that loop's thread the retirement is a task on it. From another
    thread (``delete_tenant`` run by ``asyncio.to_thread`` while a worker uses
    the tenant's database) it is sent to that loop, if it still runs. Without
    a loop the connections cannot be closed (closing awaits the driver), so
    the pool is only let go.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        home = _ENGINE_LOOPS.get(engine.sync_engine)
        if home is not None and home.is_running():
            asyncio.run_coroutine_threadsafe(aretire(engine), home)
        else:
            engine.sync_engine.dispose(close=False)
        return
    task = loop.create_task(aretire(engine))
    _PENDING_DISPOSALS.add(task)
    task.add_done_callback(_PENDING_DISPOSALS.discard)


_PENDING_DISPOSALS: set[asyncio.Task[None]] = set()
#: The loop each async engine was made on (its connections are that loop's).
_ENGINE_LOOPS: weakref.WeakKeyDictionary[Engine, asyncio.AbstractEventLoop] = (
    weakref.WeakKeyDictionary()
)


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
        self._lock = threading.Lock()
        self._engine: Engine | None = None
        self._admin_engine: Engine | None = None
        self._enqueue_engine: Engine | None = None
        self._claim_engine: Engine | None = None
        self._async_engines: dict[str, AsyncEngine] = {}  # "app" and "q" (worker)
        self._tenant_engines: _LRU[Engine] = _LRU(config.max_tenant_engines, retire)
        self._tenant_async_engines: _LRU[AsyncEngine] = _LRU(
            config.max_tenant_engines, _dispose_async
        )
        self.prepared_shared_tables = False
        self.prepared_queue = False

    # -- helpers ------------------------------------------------------------
    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    @property
    def translate_map(self) -> dict[str | None, str | None]:
        """Schema translation for this store's own database (shared mode)."""
        return {TENANT_SCHEMA: None, TENANTRY_SCHEMA: TENANTRY_SCHEMA if self.is_postgres else None}

    @property
    def distinct_app_user(self) -> str | None:
        """The login of ``url`` when an ``admin_url`` is set (it gets SET ROLE rights)."""
        return None if self.config.admin_url is None else self.config.parsed_url().username

    def _url(
        self,
        *,
        admin: bool,
        is_async: bool,
        database: str | None = None,
        must_exist: bool = False,
    ) -> URL:
        url = self.config.parsed_url(admin=admin)
        drivers = _ASYNC_DRIVERS if is_async else _SYNC_DRIVERS
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

    def _make_engine(
        self,
        url: URL,
        *,
        small: bool = False,
        idle_ping: bool = False,
        ping: bool = True,
        **kw: Any,
    ) -> Engine:
        if self.dialect == "sqlite":
            engine = create_engine(url, **kw)
            _sqlite_connect_hooks(engine)
        else:
            pre_ping = ping and not idle_ping
            engine = create_engine(url, **self._pool_options(small, pre_ping), **kw)
            if idle_ping:
                _ping_when_idle(engine)
        return engine.execution_options(schema_translate_map=self.translate_map)

    def _make_async_engine(
        self, url: URL, *, small: bool = False, ping: bool = True, **kw: Any
    ) -> AsyncEngine:
        if self.dialect == "sqlite":
            engine = create_async_engine(url)
            _sqlite_connect_hooks(engine.sync_engine)
        else:
            engine = create_async_engine(url, **self._pool_options(small, ping), **kw)
        made = engine.execution_options(schema_translate_map=self.translate_map)
        with contextlib.suppress(RuntimeError):  # made outside a loop: no home loop
            _ENGINE_LOOPS[made.sync_engine] = asyncio.get_running_loop()
        return made

    # -- the store database -------------------------------------------------
    def engine(self) -> Engine:
        with self._lock:
            if self._engine is None:
                self._engine = self._make_engine(self._url(admin=False, is_async=False))
            return self._engine

    def admin_engine(self) -> Engine:
        if self.config.admin_url is None:
            return self.engine()
        with self._lock:
            if self._admin_engine is None:
                self._admin_engine = self._make_engine(self._url(admin=True, is_async=False))
            return self._admin_engine

    def pooled_admin_engine(self, size: int) -> Engine:
        """A new admin engine on the store database holding up to *size* connections.

        For bulk operations (migrating every schema with N threads) that must
        not take the admin pool from the catalog. The caller disposes it.
        """
        url = self._url(admin=True, is_async=False)
        if self.dialect == "sqlite":
            return self._make_engine(url)
        engine = create_engine(url, pool_size=size, max_overflow=0, pool_pre_ping=True)
        return engine.execution_options(schema_translate_map=self.translate_map)

    def async_engine(self) -> AsyncEngine:
        """Async engine on the store database, for tenant and global sessions."""
        with self._lock:
            engine = self._async_engines.get("app")
            if engine is None:
                engine = self._make_async_engine(self._url(admin=False, is_async=True))
                self._async_engines["app"] = engine
            return engine

    def queue_async_engine(self, tenant_id: str | None = None) -> AsyncEngine:
        """The queue worker's engine (store database, or a tenant's own): admin, no pre-ping.

        Pre-ping costs a round trip per checkout, on every claim and
        acknowledgement. The worker does not need it: an operation that meets a
        dead connection fails, SQLAlchemy invalidates the pool, and the worker
        retries with backoff.
        """
        admin = self.config.admin_url is not None
        if tenant_id is not None:
            name = self.tenant_database_name(tenant_id)
            return self._tenant_async_engines.get_or_create(
                f"{tenant_id}:q",
                lambda: self._make_async_engine(
                    self._url(admin=admin, is_async=True, database=name, must_exist=True),
                    small=True,
                    ping=False,
                ),
            )
        with self._lock:
            engine = self._async_engines.get("q")
            if engine is None:
                engine = self._make_async_engine(self._url(admin=admin, is_async=True), ping=False)
                self._async_engines["q"] = engine
            return engine

    def claim_engine(self) -> Engine:
        """The worker's claim engine on the store database: generic plans, small pool.

        The fair claim statement costs more to plan than to run, so its
        connections plan each prepared statement once
        (``plan_cache_mode=force_generic_plan``; see ``CLAIM_SESSION_SETTINGS``
        for the rest). Only statements whose partial-index predicates are
        literals run here (claims and their acknowledgements); a generic plan
        cannot match a partial index against a bound parameter. SQLite has no
        plans to cache: the admin engine serves.

        Sync, because the worker claims from a thread of its own: a claim is
        several round trips (BEGIN, acknowledgements, the claim, COMMIT), and
        on the event loop each of them waited for a busy loop's next turn
        (measured: 6-10% more no-op throughput from the thread).
        """
        if not self.is_postgres:
            return self.admin_engine()
        admin = self.config.admin_url is not None
        with self._lock:
            if self._claim_engine is None:
                self._claim_engine = self._make_engine(
                    self._url(admin=admin, is_async=False),
                    small=True,
                    ping=False,
                    connect_args={"options": CLAIM_SESSION_OPTIONS},
                ).execution_options(tenantry_generic_plans=True)
            return self._claim_engine

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

    def tenant_engine(self, tenant_id: str, *, admin: bool = False) -> Engine:
        """Pooled engine on a tenant's own database (LRU-bounded per store)."""
        admin = admin and self.config.admin_url is not None
        name = self.tenant_database_name(tenant_id)
        return self._tenant_engines.get_or_create(
            f"{tenant_id}:{int(admin)}",
            lambda: self._make_engine(
                self._url(admin=admin, is_async=False, database=name, must_exist=True),
                small=True,
            ),
        )

    def enqueue_engine(self, tenant_id: str | None = None) -> Engine:
        """The engine of standalone enqueues: admin, pinging only idle connections.

        A standalone enqueue on PostgreSQL is one autocommitted statement; a
        pre-ping on every checkout would double its round trips. See
        ``_ping_when_idle`` for what that trades.
        """
        if self.dialect == "sqlite":  # no round trips to save
            return (
                self.admin_engine()
                if tenant_id is None
                else self.tenant_engine(tenant_id, admin=True)
            )
        admin = self.config.admin_url is not None
        if tenant_id is not None:
            name = self.tenant_database_name(tenant_id)
            return self._tenant_engines.get_or_create(
                f"{tenant_id}:e",
                lambda: self._make_engine(
                    self._url(admin=admin, is_async=False, database=name, must_exist=True),
                    small=True,
                    idle_ping=True,
                ),
            )
        with self._lock:
            if self._enqueue_engine is None:
                self._enqueue_engine = self._make_engine(
                    self._url(admin=admin, is_async=False), idle_ping=True
                )
            return self._enqueue_engine

    def tenant_async_engine(self, tenant_id: str) -> AsyncEngine:
        name = self.tenant_database_name(tenant_id)
        return self._tenant_async_engines.get_or_create(
            f"{tenant_id}:0",
            lambda: self._make_async_engine(
                self._url(admin=False, is_async=True, database=name, must_exist=True), small=True
            ),
        )

    def tenant_admin_engine(self, tenant_id: str) -> Engine:
        """A throwaway (NullPool) admin engine on a tenant database, for DDL."""
        name = self.tenant_database_name(tenant_id)
        url = self._url(admin=True, is_async=False, database=name)
        if self.dialect == "sqlite":
            engine = create_engine(url, poolclass=NullPool)
            _sqlite_connect_hooks(engine)
            return engine.execution_options(schema_translate_map=self.translate_map)
        return create_engine(url, poolclass=NullPool).execution_options(
            schema_translate_map=self.translate_map
        )

    def forget_tenant_engines(self, tenant_id: str) -> None:
        """Dispose the cached engines of one tenant database (before dropping it)."""
        for kind in ("0", "1", "q", "e"):
            engine = self._tenant_engines.pop(f"{tenant_id}:{kind}")
            if engine is not None:
                retire(engine)
            async_engine = self._tenant_async_engines.pop(f"{tenant_id}:{kind}")
            if async_engine is not None:
                _dispose_async(async_engine)

    # -- lifecycle --------------------------------------------------------------
    def dispose(self) -> None:
        for engine in (self._engine, self._admin_engine, self._enqueue_engine, self._claim_engine):
            if engine is not None:
                retire(engine)
        self._engine = self._admin_engine = self._enqueue_engine = self._claim_engine = None
        for e in self._tenant_engines.clear():
            retire(e)
        for ae in self._tenant_async_engines.clear():
            _dispose_async(ae)
        for ae in self._async_engines.values():
            _dispose_async(ae)
        self._async_engines.clear()

    async def adispose(self) -> None:
        """Dispose everything, awaiting the async engines (call from the event loop)."""
        async_engines = self._tenant_async_engines.clear() + list(self._async_engines.values())
        self._async_engines.clear()
        for ae in async_engines:
            await aretire(ae)
        self.dispose()

    def __repr__(self) -> str:
        return f"Store({self.name!r}, {self.config.masked_url})"
