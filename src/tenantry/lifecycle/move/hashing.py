"""Comparing the two copies of a tenant row by row: keys and hashes of values.

Keys and hashes are in the source's terms: target values of renumbered keys
(the table's own, and foreign keys to renumbered tables) are mapped back
before hashing, so equal rows hash equal on both sides.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Connection, Table, Text, cast, func, select, tuple_
from sqlalchemy.dialects.postgresql import JSONB

from tenantry.lifecycle.archive.codec import encode_line
from tenantry.lifecycle.rowcopy import BATCH, KeyMaps, renumbered_key
from tenantry.tenancy.models import TENANT_ID_COLUMN

Key = tuple[Any, ...]


@dataclass
class Shape:
    """How one table's rows are identified, compared and translated between the copies."""

    table: Table
    key: list[str]
    #: The table's own key, renumbered at the target (shared target), if any.
    renumbered: str | None
    #: (column, referred table) for foreign keys to renumbered tables.
    refs: list[tuple[str, str]]
    compared: list[str]


def shapes(tables: list[Table], renumber: bool) -> list[Shape]:
    found: list[Shape] = []
    renumbered: set[str] = set()
    for table in tables:
        own = renumbered_key(table) if renumber else None
        refs = [
            (fk.parent.name, fk.column.table.name)
            for fk in table.foreign_keys
            if fk.column.table.name in renumbered and fk.column.primary_key
        ]
        if own is not None:
            refs.append((own, table.name))
            renumbered.add(table.name)
        key = [c.name for c in table.primary_key.columns]
        compared = [c.name for c in table.columns if c.name != own]
        found.append(Shape(table, key, own, refs, compared))
    return found


def comparable(value: Any) -> Any:
    # SQLite keeps no time zone; tenantry stores UTC everywhere.
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(UTC).replace(tzinfo=None)
    return value


def row_hash(values: list[Any]) -> bytes:
    return hashlib.blake2b(encode_line([comparable(v) for v in values]), digest_size=16).digest()


#: What a value's text form depends on, pinned the same on both servers.
_PINNED_TEXT = (
    "SELECT set_config('TimeZone', 'UTC', true), set_config('DateStyle', 'ISO, YMD', true), "
    "set_config('IntervalStyle', 'postgres', true), set_config('extra_float_digits', '1', true), "
    "set_config('bytea_output', 'hex', true)"
)


def server_hashing(src: Connection, dst: Connection) -> bool:
    """Whether the two servers can hash the rows themselves (and pin their text forms).

    Between two PostgreSQL databases with one encoding, ``md5`` of a row's
    text form is equal exactly when the values are, and only the key and 32
    hex digits per row leave the server: much less to read in the pause than
    every value, and no Python per value. Elsewhere rows are hashed in Python,
    from the values as the export writes them.
    """
    if src.dialect.name != "postgresql" or dst.dialect.name != "postgresql":
        return False
    encodings = {c.exec_driver_sql("SHOW server_encoding").scalar() for c in (src, dst)}
    if len(encodings) != 1:
        return False
    for conn in (src, dst):
        conn.exec_driver_sql(_PINNED_TEXT)
    return True


def server_hashes(conn: Connection, shape: Shape, tenant_id: str) -> dict[Key, bytes]:
    """Key -> md5 of the row's text form (JSON as ``jsonb``: its text is normalised)."""
    table = shape.table
    values = [
        cast(table.c[c], JSONB) if isinstance(table.c[c].type, JSON) else table.c[c]
        for c in shape.compared
    ]
    digest = func.md5(cast(func.row(*values), Text))
    query = select(*(table.c[k] for k in shape.key), digest).where(
        table.c[TENANT_ID_COLUMN] == tenant_id
    )
    found: dict[Key, bytes] = {}
    for row in conn.execute(query, execution_options={"yield_per": BATCH}):
        found[tuple(row[:-1])] = row[-1].encode()
    return found


def rows_by_key(
    conn: Connection, shape: Shape, tenant_id: str, keys: list[Key]
) -> dict[Key, dict[str, Any]]:
    table = shape.table
    columns = [table.c[k] for k in shape.key]
    found: dict[Key, dict[str, Any]] = {}
    for start in range(0, len(keys), BATCH):
        chunk = keys[start : start + BATCH]
        where = (
            columns[0].in_([k[0] for k in chunk])
            if len(columns) == 1
            else tuple_(*columns).in_(chunk)
        )
        query = select(table).where(table.c[TENANT_ID_COLUMN] == tenant_id, where)
        for row in conn.execute(query).mappings():
            found[tuple(row[k] for k in shape.key)] = dict(row)
    return found


def rows(conn: Connection, table: Table, tenant_id: str) -> Iterator[dict[str, Any]]:
    query = select(table).where(table.c[TENANT_ID_COLUMN] == tenant_id)
    for row in conn.execute(query, execution_options={"yield_per": BATCH}).mappings():
        yield dict(row)


def _target_rows(
    conn: Connection, shape: Shape, tenant_id: str, back: KeyMaps
) -> Iterator[tuple[Key | None, bytes, Key]]:
    """(key in source terms, hash in source terms, key in target terms) of each target row.

    The source key is None for a row whose renumbered values map to no source
    key (an attempt whose key map was lost left it): it is deleted, and the
    source's row inserted again.
    """
    for raw in rows(conn, shape.table, tenant_id):
        row = raw
        if shape.refs:
            row = dict(raw)
            stray = False
            for column, referred in shape.refs:
                value = row[column]
                if value is not None:
                    old = back.get(referred, {}).get(value)
                    stray = stray or old is None
                    row[column] = old
            if stray:
                yield None, b"", tuple(raw[k] for k in shape.key)
                continue
        yield (
            tuple(row[k] for k in shape.key),
            row_hash([row[c] for c in shape.compared]),
            tuple(raw[k] for k in shape.key),
        )


def target_hashes(
    conn: Connection, shape: Shape, tenant_id: str, back: KeyMaps
) -> tuple[dict[Key, tuple[bytes, Key]], list[Key]]:
    """The target's rows by key (source terms): hash and key in target terms; and strays."""
    found: dict[Key, tuple[bytes, Key]] = {}
    strays: list[Key] = []
    for key, digest, target_key in _target_rows(conn, shape, tenant_id, back):
        if key is None or key in found:
            strays.append(target_key)
        else:
            found[key] = (digest, target_key)
    return found, strays
