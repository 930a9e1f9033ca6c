"""Keys and indexes on shared tables, which hold every shared-mode tenant's rows.

Row-level security does not reach constraint checks: a unique or foreign key
without ``tenant_id`` lets one tenant learn of another's values. An index not
led by ``tenant_id`` is only slow (a warning).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, text

from tenantry.tenancy.doctor.findings import Finding
from tenantry.tenancy.doctor.tables import Table, Where, q
from tenantry.tenancy.models import TENANT_ID_COLUMN


def _columns(conn: Connection, relid: int, attnums: Sequence[int]) -> list[str]:
    rows = conn.execute(
        text("SELECT attnum, attname FROM pg_attribute WHERE attrelid = :r AND attnum > 0"),
        {"r": relid},
    ).all()
    names: dict[int, str] = {int(r[0]): str(r[1]) for r in rows}
    return [names.get(n, "<expression>") for n in attnums]


def _indexes(conn: Connection, tables: Sequence[Table]) -> list[Any]:
    return list(
        conn.execute(
            text(
                "SELECT i.indexrelid, i.indrelid, ic.relname, i.indisunique, i.indisprimary, "
                "(i.indkey::int2[])[0:i.indnkeyatts - 1], con.conname "
                "FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid "
                "LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid "
                "AND con.conrelid = i.indrelid AND con.contype IN ('u', 'p', 'x') "
                "WHERE i.indrelid = ANY(:oids) ORDER BY ic.relname"
            ),
            {"oids": [t.oid for t in tables]},
        ).all()
    )


def unique_keys(conn: Connection, where: Where, tables: Sequence[Table]) -> list[Finding]:
    """A unique key without ``tenant_id`` on a shared table lets tenants probe each other's values.

    Primary keys are surrogate ids numbered for everyone and are not reported.
    """
    if not tables:
        return []
    by_oid = {t.oid: t for t in tables}
    findings = []
    for _oid, relid, index, unique, primary, attnums, constraint in _indexes(conn, tables):
        if not unique or primary:
            continue
        columns = _columns(conn, relid, attnums)
        if TENANT_ID_COLUMN in columns:
            continue
        table = by_oid[relid]
        name = f"{q(conn, table.schema)}.{q(conn, table.name)}"
        cols = ", ".join(q(conn, c) for c in [TENANT_ID_COLUMN, *columns])
        if constraint is not None:
            c = q(conn, constraint)
            fix = f"ALTER TABLE {name} DROP CONSTRAINT {c}, ADD CONSTRAINT {c} UNIQUE ({cols})"
            what = f"unique constraint {constraint}"
        else:
            i = f"{q(conn, table.schema)}.{q(conn, index)}"
            fix = f"DROP INDEX {i}; CREATE UNIQUE INDEX {q(conn, index)} ON {name} ({cols})"
            what = f"unique index {index}"
        findings.append(
            where.finding(
                where.table(table.schema, table.name),
                f"{what} on ({', '.join(columns)}) does not include {TENANT_ID_COLUMN}: "
                "tenants can probe each other's values through it",
                fix,
                check="keys",
            )
        )
    return findings


def foreign_keys(conn: Connection, where: Where, tables: Sequence[Table]) -> list[Finding]:
    """A foreign key between shared tables must pair ``tenant_id`` with ``tenant_id``.

    Constraint checks see every tenant's rows: without it acme can reference
    globex's rows, and learn which exist.
    """
    if not tables:
        return []
    by_oid = {t.oid: t for t in tables}
    rows = conn.execute(
        text(
            "SELECT conname, conrelid, confrelid, conkey, confkey FROM pg_constraint "
            "WHERE contype = 'f' AND conrelid = ANY(:oids) AND confrelid = ANY(:oids) "
            "ORDER BY conname"
        ),
        {"oids": list(by_oid)},
    ).all()
    findings = []
    for conname, relid, frelid, conkey, confkey in rows:
        columns = _columns(conn, relid, conkey)
        referred = _columns(conn, frelid, confkey)
        if (TENANT_ID_COLUMN, TENANT_ID_COLUMN) in zip(columns, referred, strict=True):
            continue
        table, target = by_oid[relid], by_oid[frelid]
        name = f"{q(conn, table.schema)}.{q(conn, table.name)}"
        tname = f"{q(conn, target.schema)}.{q(conn, target.name)}"
        cols = ", ".join(q(conn, c) for c in [TENANT_ID_COLUMN, *columns])
        fcols = ", ".join(q(conn, c) for c in [TENANT_ID_COLUMN, *referred])
        c = q(conn, conname)
        findings.append(
            where.finding(
                where.table(table.schema, table.name),
                f"foreign key {conname} ({', '.join(columns)}) -> {target.name} "
                f"({', '.join(referred)}) does not pair {TENANT_ID_COLUMN}: a tenant can "
                "reference another tenant's rows and probe which exist",
                f"ALTER TABLE {tname} ADD UNIQUE ({fcols}); ALTER TABLE {name} DROP CONSTRAINT "
                f"{c}, ADD CONSTRAINT {c} FOREIGN KEY ({cols}) REFERENCES {tname} ({fcols})",
                check="keys",
            )
        )
    return findings


def index_order(conn: Connection, where: Where, tables: Sequence[Table]) -> list[Finding]:
    """Non-unique indexes on shared tables not led by ``tenant_id`` (slow, not unsafe)."""
    if not tables:
        return []
    by_oid = {t.oid: t for t in tables}
    findings = []
    for _oid, relid, index, unique, primary, attnums, _con in _indexes(conn, tables):
        if unique or primary:
            continue
        columns = _columns(conn, relid, attnums)
        if columns and columns[0] == TENANT_ID_COLUMN:
            continue
        table = by_oid[relid]
        name = f"{q(conn, table.schema)}.{q(conn, table.name)}"
        cols = ", ".join(q(conn, c) for c in [TENANT_ID_COLUMN, *columns])
        findings.append(
            where.finding(
                where.table(table.schema, table.name),
                f"index {index} on ({', '.join(columns)}) does not lead with "
                f"{TENANT_ID_COLUMN}: every tenant's query scans all tenants' entries",
                f"DROP INDEX {q(conn, table.schema)}.{q(conn, index)}; "
                f"CREATE INDEX {q(conn, index)} ON {name} ({cols})",
                check="keys",
                severity="warn",
            )
        )
    return findings
