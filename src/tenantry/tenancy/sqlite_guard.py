"""The SQLite guard: no statement reaches shared tenant tables without tenantry's filter.

On PostgreSQL, row-level security stops raw SQL from reading other tenants'
rows. SQLite has nothing of the kind, so in shared mode tenantry's ORM hooks
were the only wall: ``text()`` SQL or a Core statement on a tenant ``Table``
saw every tenant's rows. The guard closes that with SQLite's authorizer
(``sqlite3.Connection.set_authorizer``), which SQLite consults for every table
and column a statement touches while it prepares the statement.

Each statement runs in one of three modes, decided from its execution options
just before it reaches the driver:

* **unguarded**: the statement carries :data:`~tenantry.tenancy.session.UNGUARDED`
  (tenantry's admin engine carries it for all of its statements). Anything goes.
* **vouched**: an ORM statement that tenantry filtered or stamped
  (:data:`~tenantry.tenancy.session.VOUCHED`), a statement with the explicit
  :data:`~tenantry.tenancy.session.ALL_TENANTS` bypass, or a statement of a
  :class:`~tenantry.tenancy.session.TenantSession` flush for ``TenantScoped``
  objects (stamped and checked in ``before_flush``). Tenant tables are allowed,
  ``ATTACH`` is not.
* **guarded**: everything else. A statement that reads, writes, drops or alters
  a tenant table (a table of a MetaData whose schema is the placeholder
  :data:`~tenantry.tenancy.models.TENANT_SCHEMA`) is refused with
  :class:`~tenantry.errors.UnguardedStatementError`, and so is ``ATTACH``.

The authorizer runs at prepare time only, and sqlite3 keeps up to 128 prepared
statements per connection, keyed by their SQL text: a statement prepared while
allowed would be reused, unchecked, by a later guarded statement with the same
text (a Core ``select`` can render exactly the SQL of a filtered ORM query).
So the guard remembers, per connection, the SQL texts it let through to tenant
tables (or ATTACH) and refuses a guarded run of one of them before it reaches
the driver. A text prepared while guarded touched no tenant table, so its
reuse is safe in any mode. The memory is bounded: when it fills up it is
cleared and the authorizer set again, which makes SQLite expire every prepared
statement, so each is checked afresh when next used.

Tenant databases of their own (database mode) hold one tenant's rows: there
only ``ATTACH`` (which could open another tenant's file) is refused.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, MetaData, Table, event

from tenantry.errors import UnguardedStatementError
from tenantry.tenancy.models import TENANT_SCHEMA, TenantScoped
from tenantry.tenancy.session import (
    ALL_TENANTS,
    FLUSHING,
    UNGUARDED,
    VOUCHED,
    VOUCHED_TOKEN,
)

#: Key of the guard's state in a pooled connection's ``info``.
_STATE_KEY = "tenantry_sqlite_guard"
#: SQL texts remembered per connection before the memory is cleared (> sqlite3's cache).
KNOWN_LIMIT = 2048

_GUARDED, _VOUCHED, _UNGUARDED = 0, 1, 2

#: Authorizer actions whose first argument is a table name.
_TABLE_FIRST = frozenset(
    {
        sqlite3.SQLITE_READ,
        sqlite3.SQLITE_INSERT,
        sqlite3.SQLITE_UPDATE,
        sqlite3.SQLITE_DELETE,
        sqlite3.SQLITE_DROP_TABLE,
        sqlite3.SQLITE_ANALYZE,
    }
)
#: Authorizer actions whose second argument is a table name.
_TABLE_SECOND = frozenset(
    {
        sqlite3.SQLITE_CREATE_INDEX,
        sqlite3.SQLITE_DROP_INDEX,
        sqlite3.SQLITE_CREATE_TRIGGER,
        sqlite3.SQLITE_DROP_TRIGGER,
        sqlite3.SQLITE_ALTER_TABLE,
    }
)
_ATTACH = "ATTACH"

_registry_lock = threading.Lock()
_tenant_tables: set[str] = set()
#: ``compiled_cache`` of TenantScoped mappers (what the unit of work executes with), by id.
_scoped_caches: dict[int, Any] = {}


def register_tenant_tables(metadata: MetaData) -> None:
    """Guard the tenant tables of *metadata* (those in the placeholder schema).

    Tables declared on a MetaData in that schema are found on their own; this
    is for metadata whose tables were declared before tenantry was imported
    and that no ``TenantScoped`` class reaches.
    """
    names = {t.name for t in metadata.tables.values() if t.schema == TENANT_SCHEMA}
    with _registry_lock:
        _tenant_tables.update(names)


def tenant_table_names() -> frozenset[str]:
    """The names the guard treats as tenant tables (for tests and diagnostics)."""
    _register_scoped_metadata()
    return frozenset(_tenant_tables)


def _scoped_classes() -> Iterator[type]:
    seen: set[type] = set()
    todo: list[type] = list(TenantScoped.__subclasses__())
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.add(cls)
        todo.extend(cls.__subclasses__())
        yield cls


def _register_scoped_metadata() -> None:
    for cls in _scoped_classes():
        metadata = getattr(cls, "metadata", None)
        if isinstance(metadata, MetaData):
            register_tenant_tables(metadata)


@event.listens_for(Table, "after_parent_attach")
def _on_table_attached(table: Table, parent: Any) -> None:
    if isinstance(parent, MetaData) and table.schema == TENANT_SCHEMA:
        with _registry_lock:
            _tenant_tables.add(table.name)


_register_scoped_metadata()


def _is_scoped_cache(cache: Any) -> bool:
    """Whether *cache* is the compiled cache of a TenantScoped mapper (the unit of work's)."""
    if cache is None:
        return False
    if id(cache) in _scoped_caches:
        return True
    for cls in _scoped_classes():
        mapper = getattr(cls, "__mapper__", None)
        if mapper is not None:
            found = mapper.base_mapper._compiled_cache
            _scoped_caches[id(found)] = found
    return id(cache) in _scoped_caches


@dataclass
class _Known:
    """What a statement prepared while allowed touched: tenant tables, ATTACH."""

    tables: set[str] = field(default_factory=set)
    attach: bool = False


@dataclass
class _GuardState:
    """One connection's guard: the current statement's mode and the texts let through."""

    guard_tables: bool
    reset_authorizer: Callable[[], None]
    mode: int = _GUARDED
    sql: str | None = None
    refused: str | None = None
    known: dict[str, _Known] = field(default_factory=dict)

    def authorize(
        self, action: int, arg1: str | None, arg2: str | None, dbname: str | None, _src: Any
    ) -> int:
        """SQLite's authorizer callback; runs while a statement is prepared."""
        if action == sqlite3.SQLITE_ATTACH:
            if self.mode == _UNGUARDED:
                self._remember(None, attach=True)
                return sqlite3.SQLITE_OK
            self.refused = _ATTACH
            return sqlite3.SQLITE_DENY
        if not self.guard_tables:
            return sqlite3.SQLITE_OK
        if action in _TABLE_FIRST:
            table = arg1
        elif action in _TABLE_SECOND:
            table = arg2
        else:
            return sqlite3.SQLITE_OK
        if table is None or table not in _tenant_tables or dbname not in (None, "main"):
            return sqlite3.SQLITE_OK
        if self.mode == _GUARDED:
            self.refused = table
            return sqlite3.SQLITE_DENY
        self._remember(table, attach=False)
        return sqlite3.SQLITE_OK

    def _remember(self, table: str | None, *, attach: bool) -> None:
        if self.sql is None:
            return
        known = self.known.get(self.sql)
        if known is None:
            known = self.known[self.sql] = _Known()
        if table is not None:
            known.tables.add(table)
        known.attach = known.attach or attach


def _refusal(what: str) -> UnguardedStatementError:
    if what == _ATTACH:
        return UnguardedStatementError(
            "ATTACH is refused on tenantry's SQLite connections (it could open another "
            f"tenant's database); run it with .execution_options({UNGUARDED}=True) to opt out"
        )
    return UnguardedStatementError(
        f"statement on tenant table {what!r} refused: on SQLite only tenantry's ORM "
        "statements (filtered to the session's tenant) and flushes reach tenant tables; "
        f"use the ORM, or opt out for this statement with .execution_options({UNGUARDED}=True)"
    )


def _mode(conn: Any, context: Any) -> int:
    options = context.execution_options if context is not None else conn.get_execution_options()
    if options.get(UNGUARDED):
        return _UNGUARDED
    if options.get(VOUCHED) is VOUCHED_TOKEN or options.get(ALL_TENANTS):
        return _VOUCHED
    if FLUSHING.get() and _is_scoped_cache(options.get("compiled_cache")):
        return _VOUCHED
    return _GUARDED


def _authorizer_setter(dbapi_conn: Any) -> Callable[[Callable[..., int]], None]:
    """How to set the authorizer on *dbapi_conn*: sqlite3 directly, aiosqlite in its thread."""
    if isinstance(dbapi_conn, sqlite3.Connection):
        return dbapi_conn.set_authorizer
    driver = dbapi_conn.driver_connection  # aiosqlite: sqlite3 lives in its own thread

    def set_on_driver(fn: Callable[..., int]) -> None:
        if hasattr(driver, "set_authorizer"):
            dbapi_conn.await_(driver.set_authorizer(fn))
        else:  # aiosqlite before 0.21 has no set_authorizer: run it in aiosqlite's thread
            dbapi_conn.await_(driver._execute(driver._conn.set_authorizer, fn))

    return set_on_driver


def install_guard(engine: Engine, *, guard_tables: bool) -> None:
    """Guard every connection of *engine* (a sync engine, or an async engine's ``sync_engine``).

    *guard_tables*: refuse unfiltered statements on tenant tables (the store's
    own database, where shared tenants live); ``False`` on a tenant's own
    database, where only ``ATTACH`` is refused.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, record: Any) -> None:
        _register_scoped_metadata()
        setter = _authorizer_setter(dbapi_conn)
        state = _GuardState(guard_tables, reset_authorizer=lambda: setter(state.authorize))
        setter(state.authorize)
        record.info[_STATE_KEY] = state

    @event.listens_for(engine, "before_cursor_execute")
    def _before(
        conn: Any, cursor: Any, statement: str, _params: Any, context: Any, _many: bool
    ) -> None:
        state: _GuardState | None = conn.info.get(_STATE_KEY)
        if state is None:
            return
        mode = _mode(conn, context)
        known = state.known.get(statement)
        if known is not None and mode != _UNGUARDED:
            refused = _ATTACH if known.attach else None
            if refused is None and mode == _GUARDED and known.tables:
                refused = min(known.tables)
            if refused is not None:
                cursor.close()
                raise _refusal(refused)
        if len(state.known) >= KNOWN_LIMIT:
            state.known.clear()
            state.reset_authorizer()  # SQLite expires every prepared statement
        state.mode, state.sql, state.refused = mode, statement, None

    @event.listens_for(engine, "after_cursor_execute")
    def _after(
        conn: Any, _cursor: Any, _statement: str, _params: Any, _context: Any, _many: bool
    ) -> None:
        state: _GuardState | None = conn.info.get(_STATE_KEY)
        if state is not None:
            state.mode, state.sql = _GUARDED, None

    @event.listens_for(engine, "handle_error")
    def _on_error(ctx: Any) -> None:
        conn = ctx.connection
        if conn is None or conn.closed or conn.invalidated:
            return
        state: _GuardState | None = conn.info.get(_STATE_KEY)
        if state is None:
            return
        refused, state.refused = state.refused, None
        state.mode, state.sql = _GUARDED, None
        if refused is not None:
            raise _refusal(refused) from ctx.original_exception


__all__ = ["KNOWN_LIMIT", "install_guard", "register_tenant_tables", "tenant_table_names"]
