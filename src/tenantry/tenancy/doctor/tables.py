"""What the PostgreSQL checks look at: one database (:class:`Where`) and its tenant tables.

Read from the system catalogs through the admin login, so that nothing is
created or repaired while it is being checked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import Connection, text

from tenantry.tenancy.doctor.findings import Finding, Severity
from tenantry.tenancy.models import TENANT_ID_COLUMN, TENANTRY_SCHEMA

#: tenantry's tables in the ``tenantry`` schema that hold several tenants' jobs and
#: carry the wall policy (named here: this layer does not import the queue).
JOBS_TABLES = ("tenantry_jobs", "jobs")


@dataclass
class Where:
    """One database being checked: its store, name, login, and whose data it holds."""

    store: str
    database: str
    login: str | None
    login_exists: bool
    #: The admin login (who owns what tenantry creates).
    admin: str
    tenant: str | None = None
    #: Schemas holding tenant tables, with the one tenant each holds (None: shared).
    schemas: list[tuple[str, str | None]] = field(default_factory=list)

    def table(self, schema: str, table: str) -> str:
        return f"table {schema}.{table} in database {self.database} (store {self.store})"

    def finding(
        self, obj: str, problem: str, fix: str, *, check: str, severity: Severity = "error"
    ) -> Finding:
        return Finding(self.store, obj, problem, fix, self.tenant, severity, check)


@dataclass(frozen=True)
class Table:
    oid: int
    schema: str
    name: str
    rls: bool
    force: bool
    owner: str
    #: The tenant whose rows alone the table holds (schema and database mode).
    tenant: str | None


def q(conn: Connection, name: str) -> str:
    """*name* quoted only where PostgreSQL needs it, so that a fix reads as written by hand."""
    return conn.dialect.identifier_preparer.quote(name)


def role_exists(conn: Connection, role: str) -> bool:
    found = conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}).first()
    return found is not None


def public_tenant_tables(conn: Connection, names: set[str]) -> bool:
    """Whether ``public`` holds any of the application's tenant tables (shared tables)."""
    if not names:
        return False
    found = conn.execute(
        text(
            "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND c.relname = ANY(:names) "
            "LIMIT 1"
        ),
        {"names": sorted(names)},
    ).first()
    return found is not None


def tenant_tables(conn: Connection, schemas: Sequence[tuple[str, str | None]]) -> list[Table]:
    """The tables with a ``tenant_id`` column in the schemas that hold tenant data."""
    if not schemas:
        return []
    holder = dict(schemas)
    rows = conn.execute(
        text(
            "SELECT c.oid, n.nspname, c.relname, c.relrowsecurity, c.relforcerowsecurity, "
            "pg_get_userbyid(c.relowner) "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = :col "
            "AND NOT a.attisdropped "
            "WHERE n.nspname = ANY(:schemas) AND c.relkind IN ('r', 'p') "
            "ORDER BY n.nspname, c.relname"
        ),
        {"col": TENANT_ID_COLUMN, "schemas": sorted(holder)},
    ).all()
    return [Table(r[0], r[1], r[2], r[3], r[4], r[5], holder[r[1]]) for r in rows]


def jobs_tables(conn: Connection) -> list[Table]:
    rows = conn.execute(
        text(
            "SELECT c.oid, n.nspname, c.relname, c.relrowsecurity, c.relforcerowsecurity, "
            "pg_get_userbyid(c.relowner) "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = :schema AND c.relname = ANY(:names) AND c.relkind IN ('r', 'p')"
        ),
        {"schema": TENANTRY_SCHEMA, "names": list(JOBS_TABLES)},
    ).all()
    return [Table(r[0], r[1], r[2], r[3], r[4], r[5], None) for r in rows]
