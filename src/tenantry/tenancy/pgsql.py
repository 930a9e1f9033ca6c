"""The two PostgreSQL DDL helpers every part of tenancy uses: quoting and the DDL lock."""

from __future__ import annotations

from sqlalchemy import Connection

#: Advisory lock key that serialises tenantry's DDL and grants within a database.
DDL_LOCK_KEY = 7433003


def ddl_lock(conn: Connection) -> None:
    """Serialise tenantry's DDL and GRANTs in this database until the transaction ends."""
    conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({DDL_LOCK_KEY})")


def quote(conn: Connection, identifier: str) -> str:
    return conn.dialect.identifier_preparer.quote_identifier(identifier)
