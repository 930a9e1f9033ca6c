"""PostgreSQL DDL shared by the isolation modes: roles, grants and RLS policies.

Every identifier is validated by tenantry and then quoted by the dialect's
identifier preparer; values (the tenant id, role names for set_config) are
always bound parameters.
"""

from __future__ import annotations

from sqlalchemy import Connection, MetaData, text

from tenantry.errors import InvalidIdentifierError
from tenantry.tenancy.ids import validate_identifier
from tenantry.tenancy.models import TENANT_ID_COLUMN, is_tenant_table

TENANT_GUC = "tenantry.tenant_id"
#: Advisory lock key that serialises tenantry's DDL and grants within a database.
_DDL_LOCK = 7433003
POLICY_NAME = "tenantry_tenant_isolation"


def ddl_lock(conn: Connection) -> None:
    """Serialise tenantry's DDL and GRANTs in this database until the transaction ends."""
    conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_DDL_LOCK})")


def quote(conn: Connection, identifier: str) -> str:
    return conn.dialect.identifier_preparer.quote_identifier(identifier)


def ensure_role(conn: Connection, role: str, app_user: str | None = None) -> None:
    """Create the NOLOGIN, NOBYPASSRLS role sessions switch to, and let logins assume it.

    The role is created only when missing (so an existing role needs no
    CREATEROLE privilege); a concurrent creator is tolerated. Membership is
    granted to the admin login (unless it is a superuser, which needs none) and
    to a separate application login, so ``SET ROLE`` works for both.
    """
    validate_identifier(role, "role")
    q = quote(conn, role)
    exists = conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}).first()
    if exists is None:
        conn.exec_driver_sql(
            "DO $$ BEGIN "
            f"CREATE ROLE {q} NOLOGIN NOSUPERUSER NOBYPASSRLS NOINHERIT; "
            "EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
        )
    user, superuser = conn.execute(
        text("SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user")
    ).one()
    members = [] if superuser else [user]
    if app_user and app_user != user:
        members.append(_checked_name(app_user))
    for member in members:
        granted = conn.execute(
            text("SELECT pg_has_role(:m, :r, 'MEMBER')"), {"m": member, "r": role}
        ).scalar()
        if not granted:
            conn.exec_driver_sql(f"GRANT {q} TO {quote(conn, member)}")


def grant_access(
    conn: Connection,
    schema: str,
    rls_role: str,
    app_user: str | None,
    *,
    table: str | None = None,
) -> None:
    """Let tenant sessions use *schema* (or one *table* in it).

    With ``rls_role`` set, sessions ``SET ROLE`` to it, so it gets the grants
    (and the app login may assume it). With ``rls_role = ""`` the app login is
    expected to be a non-owner already, and is granted directly.
    """
    role = grantee(rls_role, app_user)
    if not role:
        return
    # Concurrent GRANTs on one object fail with "tuple concurrently updated"
    # (two workers starting at once both run Queue.setup()): serialise them.
    ddl_lock(conn)
    if rls_role:
        ensure_role(conn, rls_role, app_user)
    if table is None:
        grant_schema(conn, schema, role)
        return
    s, r = quote(conn, validate_identifier(schema, "schema")), quote(conn, role)
    t = f"{s}.{quote(conn, _checked_name(table))}"
    conn.exec_driver_sql(f"GRANT USAGE ON SCHEMA {s} TO {r}")
    conn.exec_driver_sql(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {t} TO {r}")
    conn.exec_driver_sql(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {s} TO {r}")


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


def grantee(rls_role: str, app_user: str | None) -> str:
    """Who tenant sessions act as: the RLS role, else a distinct app login ("" for none)."""
    return rls_role or (_checked_name(app_user) if app_user else "")


def enable_rls(conn: Connection, metadata: MetaData, schema: str | None) -> None:
    """Row-level security on every tenant table: the second wall in shared mode.

    FORCE makes the policy apply to the table owner too; only superusers and
    BYPASSRLS roles skip it, and tenant sessions run as a role that is neither.
    ``current_setting(..., true)`` is NULL when no tenant is set, and
    ``tenant_id = NULL`` is never true: no tenant, no rows.
    """
    for table in metadata.sorted_tables:
        if not is_tenant_table(table) or TENANT_ID_COLUMN not in table.c:
            continue
        ensure_policy(conn, table.name, schema or "public", force=True)


def ensure_policy(conn: Connection, table: str, schema: str, *, force: bool) -> None:
    """RLS on and the tenant policy in place; no DDL (no exclusive lock) if already so."""
    if _policy_in_place(conn, table, schema, force=force):
        return
    ddl_lock(conn)
    if _policy_in_place(conn, table, schema, force=force):
        return  # another process did it while we waited
    name = f"{quote(conn, schema)}.{quote(conn, _checked_name(table))}"
    conn.exec_driver_sql(f"ALTER TABLE {name} ENABLE ROW LEVEL SECURITY")
    if force:
        conn.exec_driver_sql(f"ALTER TABLE {name} FORCE ROW LEVEL SECURITY")
    create_policy(conn, name)


def _policy_in_place(conn: Connection, table: str, schema: str, *, force: bool) -> bool:
    row = conn.execute(
        text(
            "SELECT c.relrowsecurity AND (c.relforcerowsecurity OR NOT :force) AND EXISTS ("
            " SELECT 1 FROM pg_policies p WHERE p.schemaname = n.nspname"
            " AND p.tablename = c.relname AND p.policyname = :policy)"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = :schema AND c.relname = :table"
        ),
        {"policy": POLICY_NAME, "schema": schema, "table": table, "force": force},
    ).scalar()
    return bool(row)


def create_policy(conn: Connection, qualified_table: str) -> None:
    """(Re)create the tenant policy: rows visible and writable only for the GUC's tenant."""
    col = quote(conn, TENANT_ID_COLUMN)
    predicate = f"{col} = current_setting('{TENANT_GUC}', true)"
    conn.exec_driver_sql(f"DROP POLICY IF EXISTS {POLICY_NAME} ON {qualified_table}")
    conn.exec_driver_sql(
        f"CREATE POLICY {POLICY_NAME} ON {qualified_table} "
        f"USING ({predicate}) WITH CHECK ({predicate})"
    )


def _checked_name(name: str) -> str:
    """Names the application chose (tables, login roles): quoted, but sane first."""
    if not name or len(name) > 63 or "\x00" in name:
        raise InvalidIdentifierError(f"invalid SQL name {name!r}")
    return name


def session_setup(tenant_id: str, role: str, search_path: str) -> tuple[str, dict[str, str]]:
    """One round trip per transaction: tenant GUC, role and search_path, all local.

    ``set_config(..., true)`` is the parameterised form of ``SET LOCAL``: the
    values are bound, never formatted into SQL, and vanish at COMMIT/ROLLBACK so
    nothing leaks to the next user of a pooled connection.
    """
    params = {"tid": tenant_id, "path": search_path}
    sql = (
        "SELECT set_config('tenantry.tenant_id', :tid, true), "
        "set_config('search_path', :path, true)"
    )
    if role:
        sql += ", set_config('role', :role, true)"
        params["role"] = role
    return sql, params
