"""The wall itself, per database: the binding functions, their key, and each table's policy.

``tenantry.enter`` and ``tenantry.current_tenant()`` prove which tenant a
transaction is for; row-level security with :data:`WALL_POLICY` on every
tenant table (and the jobs tables) lets through only that tenant's rows.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, text

from tenantry.tenancy.doctor.findings import Finding
from tenantry.tenancy.doctor.tables import Table, Where, q
from tenantry.tenancy.models import TENANT_ID_COLUMN

#: The policy every tenant table carries (and the jobs table).
WALL_POLICY = "tenantry_tenant_wall"
#: What the policy's predicates must call: the tenant proven by ``tenantry.enter``.
CURRENT_TENANT_CALL = "tenantry.current_tenant()"


def functions(conn: Connection, where: Where) -> list[Finding]:
    """``tenantry.enter`` and ``current_tenant``: SECURITY DEFINER, owned by the key's owner.

    Whoever can read ``tenantry.binding_key`` can mint the token of any tenant,
    so nobody but its owner (through the two functions) may.
    """
    findings: list[Finding] = []
    obj = f"schema tenantry in database {where.database} (store {where.store})"
    key_owner = conn.execute(
        text(
            "SELECT pg_get_userbyid(relowner) FROM pg_class "
            "WHERE oid = to_regclass('tenantry.binding_key')"
        )
    ).scalar()
    if key_owner is None:
        findings.append(
            where.finding(
                obj,
                "table tenantry.binding_key (the tenant binding key) is missing",
                "provision a tenant with tenantry, which creates it",
                check="functions",
            )
        )
    else:
        findings += _key_grants(conn, where)
    rows = conn.execute(
        text(
            "SELECT p.proname, oidvectortypes(p.proargtypes), p.prosecdef, "
            "pg_get_userbyid(p.proowner), "
            "EXISTS (SELECT 1 FROM unnest(coalesce(p.proconfig, '{}')) s "
            "        WHERE s LIKE 'search\\_path=%') "
            "FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname = 'tenantry' AND p.proname IN ('enter', 'current_tenant')"
        )
    ).all()
    found = {(r[0], r[1]): r for r in rows}
    for name, args in (("enter", "text, bytea"), ("current_tenant", "")):
        signature = f"tenantry.{name}({args})"
        fobj = f"function {signature} in database {where.database} (store {where.store})"
        row = found.get((name, args))
        if row is None:
            findings.append(
                where.finding(
                    fobj,
                    "missing",
                    "provision a tenant with tenantry, which creates it",
                    check="functions",
                )
            )
            continue
        _, _, definer, owner, fixed_path = row
        if not definer:
            findings.append(
                where.finding(
                    fobj,
                    "not SECURITY DEFINER",
                    f"ALTER FUNCTION {signature} SECURITY DEFINER",
                    check="functions",
                )
            )
        if not fixed_path:
            findings.append(
                where.finding(
                    fobj,
                    "SECURITY DEFINER without a fixed search_path",
                    f"ALTER FUNCTION {signature} SET search_path = pg_catalog",
                    check="functions",
                )
            )
        if key_owner is not None and owner != key_owner:
            findings.append(
                where.finding(
                    fobj,
                    f"owned by {owner}, not by {key_owner}, the owner of tenantry.binding_key",
                    f"ALTER FUNCTION {signature} OWNER TO {q(conn, key_owner)}",
                    check="functions",
                )
            )
    return findings


def _key_grants(conn: Connection, where: Where) -> list[Finding]:
    """Grants on the key table to anyone but its owner (``PUBLIC`` included)."""
    rows = conn.execute(
        text(
            "SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END, "
            "string_agg(DISTINCT a.privilege_type, ', ' ORDER BY a.privilege_type) "
            "FROM pg_class c, aclexplode(c.relacl) a "
            "WHERE c.oid = to_regclass('tenantry.binding_key') AND a.grantee <> c.relowner "
            "GROUP BY 1 ORDER BY 1"
        )
    ).all()
    return [
        where.finding(
            f"table tenantry.binding_key in database {where.database} (store {where.store})",
            f"{grantee} holds {privileges} on the tenant binding key (it can forge any tenant)",
            "REVOKE ALL ON tenantry.binding_key FROM "
            + (grantee if grantee == "PUBLIC" else q(conn, grantee)),
            check="functions",
        )
        for grantee, privileges in rows
    ]


def _policy_sql(conn: Connection, table: Table) -> str:
    col = q(conn, TENANT_ID_COLUMN)
    predicate = f"{col} = (SELECT {CURRENT_TENANT_CALL})"
    if table.tenant is not None:
        predicate += f" AND {col} = '{table.tenant}'"  # a validated tenant id
    name = f"{q(conn, table.schema)}.{q(conn, table.name)}"
    return f"CREATE POLICY {WALL_POLICY} ON {name} USING ({predicate}) WITH CHECK ({predicate})"


def table_wall(conn: Connection, where: Where, table: Table, *, force: bool) -> list[Finding]:
    """RLS on (and forced), the wall policy calling current_tenant(), no other permissive policy."""
    obj = where.table(table.schema, table.name)
    name = f"{q(conn, table.schema)}.{q(conn, table.name)}"
    findings: list[Finding] = []
    if not table.rls:
        findings.append(
            where.finding(
                obj,
                "row-level security is disabled",
                f"ALTER TABLE {name} ENABLE ROW LEVEL SECURITY",
                check="rls",
            )
        )
    if force and not table.force:
        findings.append(
            where.finding(
                obj,
                "row-level security is not forced (the owner bypasses it)",
                f"ALTER TABLE {name} FORCE ROW LEVEL SECURITY",
                check="rls",
            )
        )
    policies = conn.execute(
        text(
            "SELECT polname, polcmd, polpermissive, pg_get_expr(polqual, polrelid), "
            "pg_get_expr(polwithcheck, polrelid) FROM pg_policy WHERE polrelid = :oid "
            "ORDER BY polname"
        ),
        {"oid": table.oid},
    ).all()
    wall = next((p for p in policies if p[0] == WALL_POLICY), None)
    if wall is None:
        findings.append(
            where.finding(
                obj, f"policy {WALL_POLICY} is missing", _policy_sql(conn, table), check="rls"
            )
        )
    else:
        findings += _wall_predicate(conn, where, table, wall)
    for polname, _cmd, permissive, *_ in policies:
        if polname != WALL_POLICY and permissive:
            findings.append(
                where.finding(
                    obj,
                    f"permissive policy {polname} widens the wall (permissive policies are OR-ed)",
                    f"DROP POLICY {q(conn, polname)} ON {name}",
                    check="rls",
                )
            )
    return findings


# How PostgreSQL prints the wall's predicate (pg_get_expr): the column, cast or not,
# equal to current_tenant() (in a scalar subquery, so it runs once per statement).
_COLUMN = rf"\(?{TENANT_ID_COLUMN}\)?(?:::(?:text|character varying))?"
_BOUND = (
    rf"\({_COLUMN} = (?:\( SELECT tenantry\.current_tenant\(\) AS current_tenant\)"
    r"|tenantry\.current_tenant\(\))\)"
)


def is_wall_predicate(expression: str | None, tenant: str | None) -> bool:
    """Whether a policy expression, as ``pg_get_expr`` prints it, is exactly the wall's.

    An exact match, not a search: ``tenant_id = current_tenant() OR true``
    names the function too, and lets every row through. With *tenant*
    (schema and database mode) the expression also pins that tenant's id.
    """
    if expression is None:
        return False
    if tenant is None:
        return re.fullmatch(_BOUND, expression) is not None
    pinned = rf"\({_COLUMN} = '{re.escape(tenant)}'::(?:text|character varying)\)"
    both = rf"\((?:{_BOUND} AND {pinned}|{pinned} AND {_BOUND})\)"
    return re.fullmatch(both, expression) is not None


def _wall_predicate(
    conn: Connection, where: Where, table: Table, policy: Sequence[Any]
) -> list[Finding]:
    _name, cmd, permissive, using, check = policy
    # No WITH CHECK: PostgreSQL checks new rows with USING.
    check = check if check is not None else using
    literal = table.tenant is not None
    sound = cmd == "*" and permissive
    sound = sound and all(is_wall_predicate(e, table.tenant) for e in (using, check))
    if sound:
        return []
    name = f"{q(conn, table.schema)}.{q(conn, table.name)}"
    return [
        where.finding(
            where.table(table.schema, table.name),
            f"policy {WALL_POLICY} does not bind rows to {CURRENT_TENANT_CALL}"
            + (f" and tenant {table.tenant!r}" if literal else "")
            + f" for every command (USING {using}, WITH CHECK {check})",
            f"DROP POLICY {WALL_POLICY} ON {name}; {_policy_sql(conn, table)}",
            check="rls",
        )
    ]
