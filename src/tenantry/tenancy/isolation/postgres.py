"""PostgreSQL DDL shared by the isolation modes: grants and RLS policies.

Every identifier is validated by tenantry and then quoted by the dialect's
identifier preparer. Tenant ids in policies are validated ids (lower-case
letters, digits and ``_``), so they are safe as SQL literals.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, TypeVar, cast

from sqlalchemy import Connection, Engine, MetaData, text
from sqlalchemy.ext.asyncio import AsyncEngine

from tenantry.errors import InvalidIdentifierError
from tenantry.tenancy.binding import BIND_OPTION
from tenantry.tenancy.ids import validate_identifier, validate_tenant_id
from tenantry.tenancy.models import TENANT_ID_COLUMN, is_tenant_table
from tenantry.tenancy.pgsql import ddl_lock, quote

if TYPE_CHECKING:
    from tenantry.tenancy.store import Store

E = TypeVar("E", Engine, AsyncEngine)

__all__ = ["bound", "ddl_lock", "enable_rls", "ensure_policy", "grant_access", "quote"]

#: The policy on every tenant table (and the jobs table).
POLICY_NAME = "tenantry_tenant_wall"
#: The name an earlier, forgeable policy had; replaced where found.
OLD_POLICY_NAME = "tenantry_tenant_isolation"
#: The bound tenant of the transaction (see :mod:`tenantry.tenancy.binding`).
CURRENT_TENANT = "tenantry.current_tenant()"


def grant_access(conn: Connection, schema: str, grantee: str, *, table: str | None = None) -> None:
    """Let tenant sessions (*grantee*) use *schema*, or one *table* in it.

    The grants give nothing by themselves: every tenant table is behind the
    tenant policy, which sees rows only in a transaction bound to a tenant.
    """
    if not grantee or _granted(conn, schema, grantee, table):
        return  # no DDL lock taken when nothing is missing (migrations run in parallel)
    # Concurrent GRANTs on one object fail with "tuple concurrently updated"
    # (two workers starting at once both run Queue.setup()): serialise them.
    ddl_lock(conn)
    if table is None:
        grant_schema(conn, schema, grantee)
        return
    s, r = quote(conn, validate_identifier(schema, "schema")), quote(conn, grantee)
    t = f"{s}.{quote(conn, _checked_name(table))}"
    conn.exec_driver_sql(f"GRANT USAGE ON SCHEMA {s} TO {r}")
    conn.exec_driver_sql(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {t} TO {r}")
    conn.exec_driver_sql(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {s} TO {r}")


def _granted(conn: Connection, schema: str, grantee: str, table: str | None) -> bool:
    """Whether *grantee* already has every grant :func:`grant_access` would give."""
    row = conn.execute(
        text(
            "SELECT has_schema_privilege(:r, :s, 'USAGE') AND NOT EXISTS ("
            " SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = :s AND (CAST(:t AS text) IS NULL OR c.relname = :t"
            "   OR c.relkind = 'S')"
            # (several privileges in one has_*_privilege call mean "any of", not "all")
            " AND ((c.relkind IN ('r', 'p') AND NOT (has_table_privilege(:r, c.oid, 'SELECT')"
            "   AND has_table_privilege(:r, c.oid, 'INSERT')"
            "   AND has_table_privilege(:r, c.oid, 'UPDATE')"
            "   AND has_table_privilege(:r, c.oid, 'DELETE')))"
            "  OR (c.relkind = 'S' AND NOT (has_sequence_privilege(:r, c.oid, 'USAGE')"
            "   AND has_sequence_privilege(:r, c.oid, 'SELECT')))))"
            " FROM pg_roles WHERE rolname = :r"
        ),
        {"r": grantee, "s": schema, "t": table},
    ).scalar()
    return bool(row)


def grant_schema(conn: Connection, schema: str, role: str) -> None:
    for statement in schema_grants(conn, schema, role):
        conn.exec_driver_sql(statement)


def schema_grants(conn: Connection, schema: str, role: str) -> list[str]:
    """The GRANTs that let *role* use every table of *schema* (as SQL, to batch them)."""
    s, r = quote(conn, validate_identifier(schema, "schema")), quote(conn, role)
    return [
        f"GRANT USAGE ON SCHEMA {s} TO {r}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {s} TO {r}",
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {s} TO {r}",
    ]


def enable_rls(
    conn: Connection, metadata: MetaData, schema: str | None, tenant_id: str | None = None
) -> None:
    """The tenant policy on every tenant table, RLS enabled and forced.

    FORCE makes the policy apply to the table owner too; only superusers and
    BYPASSRLS roles skip it, and tenant sessions never run as either. With
    *tenant_id* (schema and database mode: the tables hold one tenant) the
    policy also names that tenant, so no other tenant's binding sees them.
    """
    for table in metadata.sorted_tables:
        if not is_tenant_table(table) or TENANT_ID_COLUMN not in table.c:
            continue
        ensure_policy(conn, table.name, schema or "public", force=True, tenant_id=tenant_id)


def policy_statements(
    conn: Connection,
    qualified_table: str,
    *,
    force: bool,
    tenant_id: str | None = None,
    stamp: bool = True,
) -> list[str]:
    """The DDL that puts *qualified_table* behind the tenant policy (as SQL, to batch it)."""
    col = quote(conn, TENANT_ID_COLUMN)
    predicate = f"{col} = (SELECT {CURRENT_TENANT})"
    if tenant_id is not None:
        predicate += f" AND {col} = '{validate_tenant_id(tenant_id)}'"
    statements = [f"ALTER TABLE {qualified_table} ENABLE ROW LEVEL SECURITY"]
    if force:
        statements.append(f"ALTER TABLE {qualified_table} FORCE ROW LEVEL SECURITY")
    statements += [
        f"DROP POLICY IF EXISTS {OLD_POLICY_NAME} ON {qualified_table}",
        f"DROP POLICY IF EXISTS {POLICY_NAME} ON {qualified_table}",
        f"CREATE POLICY {POLICY_NAME} ON {qualified_table} "
        f"USING ({predicate}) WITH CHECK ({predicate})",
    ]
    if stamp:
        # Raw INSERTs that leave tenant_id out are stamped by the database.
        statements.append(
            f"ALTER TABLE {qualified_table} ALTER COLUMN {col} SET DEFAULT {CURRENT_TENANT}"
        )
    return statements


def tenant_policies(
    conn: Connection, metadata: MetaData, schema: str, tenant_id: str | None
) -> list[str]:
    """The policy DDL of every tenant table of *metadata* in *schema* (to batch it)."""
    statements: list[str] = []
    s = quote(conn, validate_identifier(schema, "schema"))
    for table in metadata.sorted_tables:
        if is_tenant_table(table) and TENANT_ID_COLUMN in table.c:
            name = f"{s}.{quote(conn, _checked_name(table.name))}"
            statements += policy_statements(conn, name, force=True, tenant_id=tenant_id)
    return statements


def ensure_policy(
    conn: Connection,
    table: str,
    schema: str,
    *,
    force: bool,
    tenant_id: str | None = None,
    stamp: bool = True,
) -> None:
    """RLS on and the tenant policy in place; no DDL (no exclusive lock) if already so."""
    if _policy_in_place(conn, table, schema, force=force):
        return
    ddl_lock(conn)
    if _policy_in_place(conn, table, schema, force=force):
        return  # another process did it while we waited
    name = f"{quote(conn, schema)}.{quote(conn, _checked_name(table))}"
    statements = policy_statements(conn, name, force=force, tenant_id=tenant_id, stamp=stamp)
    for statement in statements:
        conn.exec_driver_sql(statement)


def _policy_in_place(conn: Connection, table: str, schema: str, *, force: bool) -> bool:
    row = conn.execute(
        text(
            # By name in pg_policy, never deparsed (pg_policies, pg_get_expr): deparsing
            # takes a lock on each table whose policy is read, and two migrations
            # altering their own tables deadlocked on each other's. The policy's
            # text is tenantry's own; `tenantry doctor` checks it.
            "SELECT c.relrowsecurity AND (c.relforcerowsecurity OR NOT :force) AND EXISTS ("
            " SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid AND p.polname = :policy)"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = :schema AND c.relname = :table"
        ),
        {"policy": POLICY_NAME, "schema": schema, "table": table, "force": force},
    ).scalar()
    return bool(row)


def _checked_name(name: str) -> str:
    """Names the application chose (tables, login roles): quoted, but sane first."""
    if not name or len(name) > 63 or "\x00" in name:
        raise InvalidIdentifierError(f"invalid SQL name {name!r}")
    return name


def bound(engine: E, store: Store, tenant_id: str, search_path: str, **options: Any) -> E:
    """*engine* with every transaction bound to *tenant_id* (PostgreSQL), and *options*.

    The binding is an execution option, so it reaches every connection the
    engine hands out and runs at each BEGIN (see :mod:`tenantry.tenancy.binding`).
    ``pg_temp`` goes last in *search_path*: a temporary table never shadows a
    tenant table. The engines are kept: making one costs more than a cached
    statement, and a session is opened per request.
    """
    if not store.is_postgres:
        return engine.execution_options(**options) if options else engine
    key = (engine, tenant_id, search_path)
    with _bound_lock:
        found = _bound_engines.get(key)
        if found is not None:
            _bound_engines.move_to_end(key)
            return cast(E, found)
    binding = store.prepare_wall().binding(tenant_id, f"{search_path}, pg_temp")
    made = engine.execution_options(**options, **{BIND_OPTION: binding})
    with _bound_lock:
        _bound_engines[key] = made
        while len(_bound_engines) > _BOUND_CAPACITY:
            _bound_engines.popitem(last=False)
    return made


#: Bound engines by (engine, tenant, search_path); only the options are new in them,
#: the pool is the engine's. Entries keep their engine alive until evicted.
_BOUND_CAPACITY = 2048
_bound_engines: OrderedDict[tuple[Any, str, str], Any] = OrderedDict()
_bound_lock = threading.Lock()
