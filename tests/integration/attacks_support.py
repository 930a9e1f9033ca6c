"""Deployments and bookkeeping for the isolation attack suite (``test_attacks.py``).

A :class:`Deployment` is one Tenantry store on its own PostgreSQL database with
two tenants, ``acme`` (the attacker) and ``globex`` (the victim), built once per
(isolation mode, login set-up, connection path). Between attacks its rows are
put back and its pools closed, so every attack starts from the same data and
from new server connections.

The truth about the data is read around tenantry, through superuser psycopg
connections (a superuser is never subject to row-level security): a snapshot
of every ``notes`` table in every database of the deployment. An attack passes
only when everything outside the attacker's own rows is byte for byte what it
was before.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import text
from sqlalchemy.engine import Connection, CursorResult, Result, make_url
from sqlalchemy.exc import DBAPIError

import tenantry.errors
from tenantry import StoreConfig, Tenantry, TenantryConfig, tenant_context
from tenantry.tenancy.session import TenantSession
from tenantry.tenancy.store import Store
from tests.pgbouncer import PgBouncer
from tests.pgserver import connect

ATTACKER = "acme"
VICTIM = "globex"
TENANTS = (ATTACKER, VICTIM)
TABLE = "notes"
#: The raw read every attack ends with (and every control starts with).
READ = "SELECT tenant_id, body FROM notes ORDER BY body"

MODES = ("shared", "schema", "database")
LOGINS = ("single", "split")
PATHS = ("direct", "pool1", "pgbouncer")

#: What tenantry raises when it refuses to weaken isolation (absent in older code).
ISOLATION_ERROR: type[Exception] | None = getattr(tenantry.errors, "IsolationError", None)
#: An attack that raises one of these was stopped (by the database or by tenantry).
REFUSED: tuple[type[Exception], ...] = (DBAPIError, psycopg.Error) + (
    (ISOLATION_ERROR,) if ISOLATION_ERROR is not None else ()
)

Row = tuple[Any, ...]
Location = tuple[str, str]  # (database, schema)


def private(tenant_id: str, n: int) -> str:
    """A seeded body: it names its tenant, so a leaked row is found in any result."""
    return f"{tenant_id}-private-{n}"


def marker(tenant_id: str) -> str:
    return f"{tenant_id}-private"


def other(tenant_id: str) -> str:
    return VICTIM if tenant_id == ATTACKER else ATTACKER


def leaked(rows: Sequence[Any], tenant_id: str) -> list[Any]:
    """The rows (or values) of *rows* that carry data of a tenant other than *tenant_id*."""
    foreign = marker(other(tenant_id))
    return [r for r in rows if foreign in repr(r)]


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def dbapi_error_code(exc: BaseException) -> str | None:
    """The SQLSTATE of a database error raised through SQLAlchemy or psycopg."""
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    return getattr(orig, "sqlstate", None)


@dataclass(repr=False)
class Deployment:
    """One store with both tenants; see the module docstring."""

    mode: str
    login: str
    path: str
    server_url: str  # superuser SQLAlchemy URL of the store database (direct)
    store_db: str
    config: TenantryConfig
    app_login: str  # the login of the store's ``url``
    admin_login: str
    _admin: dict[str, psycopg.Connection[Any]] = field(default_factory=dict)
    bouncer: PgBouncer | None = None
    _tenantry: Tenantry | None = None
    _tables: list[Location] | None = None

    @property
    def tenantry(self) -> Tenantry:
        """This attack's Tenantry (see :meth:`open`)."""
        assert self._tenantry is not None, "the deployment is not open"
        return self._tenantry

    def open(self) -> Tenantry:
        """A Tenantry on the deployment, made on first use and kept for the module."""
        if self._tenantry is None:
            self._tenantry = Tenantry(self.config)
        return self._tenantry

    def fresh_connections(self) -> None:
        """Close every pooled server connection, so the next request starts on a new one.

        ``Engine.dispose`` gives each cached engine a new, empty pool (the engines
        stay cached), so no session state, temp table or prepared statement of
        an earlier attack is left anywhere.
        """
        t = self.open()
        store = t.default_store
        engines = [store.engine(), store.admin_engine()]
        if self.mode == "database":
            for tid in TENANTS:
                engines += [store.tenant_engine(tid), store.tenant_engine(tid, admin=True)]
        for engine in engines:
            engine.dispose()
        if self.bouncer is not None:
            # PgBouncer keeps its own server connections: close those too.
            for db in self.databases:
                for command in (f"KILL {db}", f"RESUME {db}"):
                    with contextlib.suppress(psycopg.Error):
                        self.bouncer.admin(command)

    def close(self) -> None:
        if self._tenantry is not None:
            self._tenantry.close()
            self._tenantry = None

    def __repr__(self) -> str:
        return f"Deployment({self.id})"

    @property
    def id(self) -> str:
        return f"{self.mode}-{self.login}-{self.path}"

    @property
    def one_backend(self) -> bool:
        """Consecutive requests of both tenants share one server connection (pid)."""
        return self.path in ("pool1", "pgbouncer") and self.mode != "database"

    # -- locations ----------------------------------------------------------
    def database_of(self, tenant_id: str) -> str:
        if self.mode == "database":
            return self._store.tenant_database_name(tenant_id)
        return self.store_db

    def schema_of(self, tenant_id: str) -> str:
        return f"t_{tenant_id}" if self.mode == "schema" else "public"

    def location(self, tenant_id: str) -> Location:
        return (self.database_of(tenant_id), self.schema_of(tenant_id))

    @property
    def _store(self) -> Store:
        return Store(self.config.store("default"))

    @property
    def databases(self) -> list[str]:
        return sorted({self.store_db, *(self.database_of(t) for t in TENANTS)})

    def admin(self, database: str) -> psycopg.Connection[Any]:
        """A superuser autocommit connection to *database* (kept open)."""
        conn = self._admin.get(database)
        if conn is None or conn.closed:
            conn = connect(self.server_url, database)
            self._admin[database] = conn
        return conn

    def close_admin(self) -> None:
        for conn in self._admin.values():
            conn.close()
        self._admin.clear()

    # -- data -----------------------------------------------------------------
    def tables(self) -> list[Location]:
        """Every ``notes`` table of the deployment, temporary ones excluded (looked up once)."""
        if self._tables is None:
            self._tables = self._find_tables()
        return self._tables

    def _find_tables(self) -> list[Location]:
        found: list[Location] = []
        for db in self.databases:
            rows = (
                self.admin(db)
                .execute(
                    "SELECT table_schema FROM information_schema.tables WHERE table_name = %s"
                    " AND table_schema NOT LIKE 'pg\\_temp\\_%%' ORDER BY 1",
                    (TABLE,),
                )
                .fetchall()
            )
            found += [(db, str(r[0])) for r in rows]
        return found

    def snapshot(self) -> dict[Location, list[Row]]:
        out: dict[Location, list[Row]] = {}
        for db, schema in self.tables():
            query = sql.SQL("SELECT tenant_id, id, body FROM {}.{} ORDER BY id").format(
                sql.Identifier(schema), sql.Identifier(TABLE)
            )
            out[(db, schema)] = [tuple(r) for r in self.admin(db).execute(query).fetchall()]
        return out

    def protected(self, actor: str | None) -> dict[Location, list[Row]]:
        """Everything *actor* must not change: all but its own rows in its own place.

        With no *actor* (a global session) that is every row.
        """
        own = self.location(actor) if actor is not None else None
        return {
            loc: [r for r in rows if not (loc == own and r[0] == actor)]
            for loc, rows in self.snapshot().items()
        }

    def rows_of(self, tenant_id: str) -> list[str]:
        """The bodies of *tenant_id*'s rows in its own table (admin view)."""
        return sorted(r[2] for r in self.snapshot()[self.location(tenant_id)] if r[0] == tenant_id)

    @contextmanager
    def guard(self, actor: str | None) -> Iterator[None]:
        """Fails when anything outside *actor*'s own rows changed inside the block."""
        before = self.protected(actor)
        yield
        after = self.protected(actor)
        assert after == before, f"{actor}'s attack changed data it does not own"

    def reset(self) -> None:
        """The seeded rows back in place."""
        for db, schema in self.tables():
            self.admin(db).execute(
                sql.SQL("DELETE FROM {}.{}").format(sql.Identifier(schema), sql.Identifier(TABLE))
            )
        for tid in TENANTS:
            db, schema = self.location(tid)
            query = sql.SQL("INSERT INTO {}.{} (tenant_id, body) VALUES (%s, %s), (%s, %s)")
            self.admin(db).execute(
                query.format(sql.Identifier(schema), sql.Identifier(TABLE)),
                (tid, private(tid, 1), tid, private(tid, 2)),
            )

    def wall_state(self) -> list[Row]:
        """RLS flags and policies of every tenant table (admin view)."""
        state: list[Row] = []
        for db, schema in self.tables():
            rows = (
                self.admin(db)
                .execute(
                    "SELECT c.relrowsecurity, c.relforcerowsecurity,"
                    " array(SELECT p.polname || ':' || pg_get_expr(p.polqual, p.polrelid)"
                    "  FROM pg_policy p WHERE p.polrelid = c.oid ORDER BY 1)"
                    " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                    " WHERE n.nspname = %s AND c.relname = %s",
                    (schema, TABLE),
                )
                .fetchall()
            )
            state += [(db, schema, *r) for r in rows]
        return state

    def policy_names(self) -> list[str]:
        """The policies on the tenant tables (``DROP POLICY IF EXISTS`` of a missing one
        only raises a notice, so only existing names make a real attack)."""
        names: set[str] = set()
        for db in self.databases:
            rows = self.admin(db).execute(
                "SELECT polname FROM pg_policy WHERE polrelid IN"
                " (SELECT oid FROM pg_class WHERE relname = %s)",
                (TABLE,),
            )
            names |= {str(r[0]) for r in rows.fetchall()}
        return sorted(names)

    # -- requests -------------------------------------------------------------
    @contextmanager
    def request(self, tenant_id: str, **options: Any) -> Iterator[TenantSession]:
        """One tenant request: a session of *tenant_id*, closed at the end."""
        with tenant_context(tenant_id), self.tenantry.session(**options) as session:
            yield session

    def control(self, session: TenantSession, tenant_id: str) -> None:
        """The session works and sees exactly its tenant's seeded rows (before an attack)."""
        rows = [tuple(r) for r in session.execute(text(READ)).all()]
        assert rows == [(tenant_id, private(tenant_id, 1)), (tenant_id, private(tenant_id, 2))]


def backend_pid(conn: TenantSession | Connection) -> int:
    return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def rows_of(result: Result[Any]) -> list[Row]:
    """The rows of a raw statement's result ([] for one that returns none, like SET)."""
    assert isinstance(result, CursorResult)
    return [tuple(r) for r in result.all()] if result.returns_rows else []


def run_steps(session: TenantSession, steps: Sequence[str]) -> list[Row] | None:
    """Run raw *steps* in the session; every row any of them returns, or None if refused.

    The session is committed when all steps ran (so a write that got through is
    seen by the admin snapshot), rolled back when one was refused.
    """
    rows: list[Row] = []
    try:
        for step in steps:
            rows += rows_of(session.execute(text(step)))
        session.commit()
    except REFUSED:
        session.rollback()
        return None
    return rows


def make_store(
    name: str, url: str, admin_url: str | None, rls_role: str | None, pool_size: int, pooler: bool
) -> StoreConfig:
    options: dict[str, Any] = {"pool_size": pool_size}
    if admin_url is not None:
        options["admin_url"] = admin_url
    if rls_role is not None:
        options["rls_role"] = rls_role
    if pooler and "pooler" in getattr(StoreConfig, "__dataclass_fields__", {}):
        options["pooler"] = "transaction"
    return StoreConfig(name, url, **options)


def create_login(server_url: str) -> str:
    """A plain LOGIN role (cluster-wide, so uniquely named); dropped by :func:`drop_login`."""
    role = unique("app")
    with connect(server_url) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE").format(
                sql.Identifier(role)
            )
        )
    return role


def drop_login(server_url: str, role: str) -> None:
    with connect(server_url) as conn:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def drop_databases(server_url: str, store_db: str) -> None:
    """The store database and the tenant databases named after it, now (not in background)."""
    with connect(server_url) as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datname = %s OR datname LIKE %s",
            (store_db, store_db + "\\_%"),
        ).fetchall()
        for (db,) in rows:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db))
            )


def build(
    mode: str,
    login: str,
    path: str,
    server_url: str,
    store_db: str,
    app_login: str | None,
    bouncer: PgBouncer | None = None,
) -> Deployment:
    """The deployment for one matrix cell; with *bouncer*, every URL goes through it."""
    direct = make_url(server_url).set(drivername="postgresql+psycopg", database=store_db)
    super_url = direct.render_as_string(hide_password=False)
    route = bouncer.url if bouncer is not None else (lambda u: u)
    if login == "single":
        url, admin_url, rls_role = route(super_url), None, None
    else:
        assert app_login is not None
        url = route(direct.set(username=app_login).render_as_string(hide_password=False))
        admin_url, rls_role = route(super_url), ""
    store = make_store(
        "default", url, admin_url, rls_role, 1 if path == "pool1" else 5, path == "pgbouncer"
    )
    config = TenantryConfig(stores={"default": store})
    dep = Deployment(
        mode=mode,
        login=login,
        path=path,
        server_url=super_url,
        store_db=store_db,
        config=config,
        bouncer=bouncer,
        app_login=app_login or str(direct.username),
        admin_login=str(direct.username),
    )
    t = dep.open()
    try:
        for tid in TENANTS:
            t.create_tenant(tid, isolation=mode)
    finally:
        dep.close()
    return dep
