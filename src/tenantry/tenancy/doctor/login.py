"""The session login: its attributes, memberships and rights, per store and per database.

A wall of row-level security stands only as long as the login sessions use
cannot step around it: no superuser or ``BYPASSRLS`` (nor a role it may
``SET ROLE`` to), no owner of tenant tables, nothing it may create that
shadows tenant tables, no rights on tenantry's tables without the wall.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, text

from tenantry.tenancy.doctor.findings import Finding
from tenantry.tenancy.doctor.tables import Table, Where, q
from tenantry.tenancy.doctor.wall import WALL_POLICY
from tenantry.tenancy.models import TENANTRY_SCHEMA
from tenantry.tenancy.store import Store


def session_login(store: Store) -> str | None:
    """The login tenant sessions of a store connect as (None on SQLite).

    With ``admin_url`` set, sessions use ``url``'s login; with ``url`` alone,
    tenantry creates a login of its own for the store database (named after
    ``rls_role``) and sessions connect as it. Raises
    :class:`~tenantry.errors.IsolationError` for a store whose sessions would
    run as the owner (``rls_role = ""`` without ``admin_url``).
    """
    if not store.is_postgres:
        return None
    return store.session_login


def login_attributes(conn: Connection, where: Where) -> list[Finding]:
    """Role attributes, server-wide: checked once per store."""
    if where.login is None or not where.login_exists:
        return []
    row = conn.execute(
        text(
            "SELECT rolsuper, rolbypassrls, rolcreaterole, rolcreatedb FROM pg_roles "
            "WHERE rolname = :r"
        ),
        {"r": where.login},
    ).one()
    obj = f"role {where.login} (store {where.store}, the session login)"
    who = q(conn, where.login)
    findings = []
    for has, attribute, why in zip(
        row,
        ("SUPERUSER", "BYPASSRLS", "CREATEROLE", "CREATEDB"),
        (
            "bypasses every wall",
            "bypasses row-level security",
            "can grant itself other roles' rights",
            "can create databases",
        ),
        strict=True,
    ):
        if has:
            findings.append(
                where.finding(
                    obj,
                    f"is {attribute}: it {why}",
                    f"ALTER ROLE {who} NO{attribute}",
                    check="login",
                )
            )
    for role, rsuper, bypass in _memberships(conn, where.login):
        reasons = [r for r, yes in (("a superuser", rsuper), ("BYPASSRLS", bypass)) if yes]
        if reasons:
            findings.append(
                where.finding(
                    obj,
                    f"is a member of {role}, which is {' and '.join(reasons)} "
                    "(SET ROLE gets its rights)",
                    f"REVOKE {q(conn, role)} FROM {who}",
                    check="login",
                )
            )
    return findings


def is_superuser(conn: Connection, login: str) -> bool:
    """A superuser holds every privilege and membership: that is reported once, not each."""
    found = conn.execute(
        text("SELECT rolsuper FROM pg_roles WHERE rolname = :r"), {"r": login}
    ).scalar()
    return bool(found)


def login_in_database(conn: Connection, where: Where, tables: Sequence[Table]) -> list[Finding]:
    """TEMP, CREATE, ownership and memberships of the session login in one database."""
    login = str(where.login)
    who = q(conn, login)
    obj = f"role {login} in database {where.database} (store {where.store}, the session login)"
    findings = []
    if not is_superuser(conn, login):
        temp = conn.execute(
            text("SELECT has_database_privilege(:r, current_database(), 'TEMPORARY')"),
            {"r": login},
        ).scalar()
        if temp:
            findings.append(
                where.finding(
                    obj,
                    "may create temporary tables (they can shadow tenant tables)",
                    f"REVOKE TEMPORARY ON DATABASE {q(conn, where.database)} FROM PUBLIC, {who}",
                    check="login",
                )
            )
        creatable = conn.execute(
            text(
                "SELECT nspname FROM pg_namespace WHERE has_schema_privilege(:r, oid, 'CREATE') "
                "AND nspname NOT LIKE 'pg\\_temp\\_%' AND nspname NOT LIKE 'pg\\_toast\\_temp\\_%' "
                "ORDER BY nspname"
            ),
            {"r": login},
        ).scalars()
        for schema in creatable:
            findings.append(
                where.finding(
                    obj,
                    f"may CREATE in schema {schema} (objects there can shadow or trap tenant SQL)",
                    f"REVOKE CREATE ON SCHEMA {q(conn, schema)} FROM PUBLIC, {who}",
                    check="login",
                )
            )
    owners: dict[str, list[Table]] = {}
    for table in tables:
        owners.setdefault(table.owner, []).append(table)
    for table in owners.get(login, []):
        name = f"{q(conn, table.schema)}.{q(conn, table.name)}"
        findings.append(
            where.finding(
                where.table(table.schema, table.name),
                f"owned by the session login {login} (an owner can switch RLS off)",
                f"ALTER TABLE {name} OWNER TO {q(conn, where.admin)}",
                check="login",
            )
        )
    for role, _rsuper, _bypass in _memberships(conn, login):
        if role in owners:
            findings.append(
                where.finding(
                    obj,
                    f"is a member of {role}, which is the owner of tenant tables "
                    "(SET ROLE gets its rights)",
                    f"REVOKE {q(conn, role)} FROM {who}",
                    check="login",
                )
            )
    return findings


def _memberships(conn: Connection, login: str) -> list[tuple[str, bool, bool]]:
    """The roles *login* is a member of, transitively: (name, superuser, BYPASSRLS)."""
    if is_superuser(conn, login):
        return []  # a superuser is a member of every role
    rows = conn.execute(
        text(
            "SELECT r.rolname, r.rolsuper, r.rolbypassrls FROM pg_roles r "
            "WHERE r.rolname <> :r AND pg_has_role(:r, r.oid, 'MEMBER') ORDER BY r.rolname"
        ),
        {"r": login},
    ).all()
    return [(str(r[0]), bool(r[1]), bool(r[2])) for r in rows]


def tenantry_grants(conn: Connection, where: Where) -> list[Finding]:
    """The session login may touch only tenantry tables that carry the wall policy.

    Privileges held through PUBLIC or any role the login may ``SET ROLE`` to
    count, not only its own.
    """
    login = str(where.login)
    rows = conn.execute(
        text(
            "SELECT c.relname, a.privilege_type, "
            "CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, "
            "aclexplode(c.relacl) a "
            "WHERE n.nspname = :schema AND c.relkind IN ('r', 'p', 'v', 'm', 'f') "
            "AND a.grantee <> c.relowner AND c.relname <> 'binding_key' "
            "AND (a.grantee = 0 OR pg_has_role(:r, a.grantee, 'MEMBER')) "
            "AND NOT (c.relrowsecurity AND EXISTS (SELECT 1 FROM pg_policy p "
            "         WHERE p.polrelid = c.oid AND p.polname = :policy)) "
            "ORDER BY c.relname, a.privilege_type"
        ),
        {"schema": TENANTRY_SCHEMA, "r": login, "policy": WALL_POLICY},
    ).all()
    by_table: dict[str, tuple[set[str], set[str]]] = {}
    for table, privilege, grantee in rows:
        privileges, grantees = by_table.setdefault(table, (set(), set()))
        privileges.add(privilege)
        grantees.add(grantee)
    findings = []
    for table, (privileges, grantees) in by_table.items():
        name = f"{q(conn, TENANTRY_SCHEMA)}.{q(conn, table)}"
        to = ", ".join(g if g == "PUBLIC" else q(conn, g) for g in sorted(grantees))
        findings.append(
            where.finding(
                f"table {TENANTRY_SCHEMA}.{table} in database {where.database} "
                f"(store {where.store})",
                f"the session login {login} holds {', '.join(sorted(privileges))} "
                f"(granted to {', '.join(sorted(grantees))}) on a table without the wall policy",
                f"REVOKE ALL ON {name} FROM {to}",
                check="grants",
            )
        )
    return findings
