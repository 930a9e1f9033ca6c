"""Renumbered keys of a move into shared tables.

Shared tables number their surrogate keys for all tenants, so the copy gets
new ones; the delta must still find each copied row. The renumbering is kept
in ``tenantry_move_keys`` on the target store, written in the same
transaction as the rows it describes, and removed with the move.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    MetaData,
    String,
    Table,
    delete,
    insert,
    select,
)

from tenantry.lifecycle.move.state import Move
from tenantry.lifecycle.rowcopy import BATCH, KeyMaps
from tenantry.tenancy.facade import Tenancy
from tenantry.tenancy.isolation import postgres as pg
from tenantry.tenancy.models import TENANTRY_SCHEMA

#: Per table, the source's key and the target's. On the target store, so that it
#: commits with the rows.
move_keys_table = Table(
    "tenantry_move_keys",
    MetaData(schema=TENANTRY_SCHEMA),
    Column("tenant_id", String(40), primary_key=True),
    Column("table_name", String(128), primary_key=True),
    Column("old_key", BigInteger, primary_key=True),
    Column("new_key", BigInteger, nullable=False),
)


def ensure_keys_table(conn: Connection) -> None:
    name = pg.quote(conn, move_keys_table.name)
    if conn.dialect.name == "postgresql":
        schema = pg.quote(conn, TENANTRY_SCHEMA)
        conn.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        name = f"{schema}.{name}"
    conn.exec_driver_sql(
        f"CREATE TABLE IF NOT EXISTS {name} (tenant_id VARCHAR(40) NOT NULL, "
        "table_name VARCHAR(128) NOT NULL, old_key BIGINT NOT NULL, new_key BIGINT NOT NULL, "
        "PRIMARY KEY (tenant_id, table_name, old_key))"
    )


def save_keys(conn: Connection, tenant_id: str, table: str, keys: dict[Any, Any]) -> None:
    rows = [
        {"tenant_id": tenant_id, "table_name": table, "old_key": old, "new_key": new}
        for old, new in keys.items()
    ]
    for start in range(0, len(rows), BATCH):
        conn.execute(insert(move_keys_table), rows[start : start + BATCH])


def read_keys(conn: Connection, tenant_id: str) -> KeyMaps:
    found: KeyMaps = {}
    query = select(
        move_keys_table.c.table_name, move_keys_table.c.old_key, move_keys_table.c.new_key
    ).where(move_keys_table.c.tenant_id == tenant_id)
    for table, old, new in conn.execute(query):
        found.setdefault(table, {})[old] = new
    return found


def drop_keys(conn: Connection, tenant_id: str, table: str, olds: list[Any]) -> None:
    """Forget the keys of rows the delta deleted from the target."""
    for start in range(0, len(olds), BATCH):
        conn.execute(
            delete(move_keys_table).where(
                move_keys_table.c.tenant_id == tenant_id,
                move_keys_table.c.table_name == table,
                move_keys_table.c.old_key.in_(olds[start : start + BATCH]),
            )
        )


def reset_keys(conn: Connection, tenant_id: str) -> None:
    conn.execute(delete(move_keys_table).where(move_keys_table.c.tenant_id == tenant_id))


def forget_keys(tenantry: Tenancy, move: Move) -> None:
    if not move.renumbers:
        return
    with tenantry.store(move.to_store).admin_engine().begin() as conn:
        ensure_keys_table(conn)
        reset_keys(conn, move.tenant_id)


def backwards(keys: KeyMaps) -> KeyMaps:
    """Per table, the target's key to the source's."""
    return {name: {new: old for old, new in m.items()} for name, m in keys.items()}
