"""Bulk enqueue by binary ``COPY``, on tenantry's own (owner) connection.

Binary, because then PostgreSQL parses only the payload's JSON: the text
format had it parse two timestamps, the errors' JSON and three integers per
row as well (measured: see docs/performance.md). Every column but id and
payload is the same for the whole batch, so the rest of a row is encoded
once; the payload is JSON text already (``Handler.json_text``, ASCII), which
``jsonb``'s binary input reads after a version byte.

``COPY FROM`` is refused on a table with row-level security for roles it
applies to, so a tenant session (or a caller's connection) takes the INSERT
path instead.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
from sqlalchemy import Connection
from sqlalchemy.util import await_only

from tenantry.queue.drivers.base import NewJobs
from tenantry.queue.drivers.postgres.fast_insert import translated
from tenantry.queue.drivers.postgres.queries import COPY_JOBS, COPY_SHARED, NEXT_IDS
from tenantry.queue.drivers.postgres.rows import WRITTEN

#: Fewer rows than this go in with the one-statement INSERT (one round trip).
COPY_MIN_ROWS = 200
# Rows per write: the server writes each chunk (heap, indexes) while the next
# one is serialized here, so a small first chunk starts it early; bounded memory.
COPY_CHUNK = 1000

_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_NULL_FIELD = struct.pack(">i", -1)
_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_TRAILER = struct.pack(">h", -1)
#: A row's start: its field count, the id (int8) field, the payload's length.
_ROW_HEAD = struct.Struct(">hiqi")
_KINDS = dict(WRITTEN)


def binary_field(kind: str, value: Any, encoding: str) -> bytes:
    """One field in ``COPY``'s binary format: its length, then its value."""
    if value is None:
        return _NULL_FIELD
    if kind == "text":
        data = str(value).encode(encoding)
    elif kind == "smallint":
        data = struct.pack(">h", value)
    elif kind == "integer":
        data = struct.pack(">i", value)
    elif kind == "timestamptz":
        # Microseconds since 2000-01-01 UTC; the value is timezone-aware.
        delta = value - _PG_EPOCH
        data = struct.pack(
            ">q", (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
        )
    elif kind == "jsonb":
        data = b"\x01" + json.dumps(value).encode()
    else:  # pragma: no cover - WRITTEN names only the kinds above
        raise AssertionError(f"no binary COPY format for {kind}")
    return struct.pack(">i", len(data)) + data


def copy_binary(ids: list[int], rows: NewJobs, encoding: str) -> Iterator[bytes]:
    """The rows as binary ``COPY`` data (``COPY_JOBS``' columns), in chunks of rows."""
    yield _SIGNATURE
    fields = 2 + len(COPY_SHARED)
    common = rows.common
    tail = b"".join(binary_field(_KINDS[c], common[c], encoding) for c in COPY_SHARED)
    pack = _ROW_HEAD.pack
    for start in range(0, len(ids), COPY_CHUNK):
        chunk = ids[start : start + COPY_CHUNK]
        texts = rows.payload_texts(start, start + COPY_CHUNK)
        yield b"".join(
            [
                b"%b\x01%b%b" % (pack(fields, 8, i, len(t) + 1), t, tail)
                for i, t in zip(chunk, texts, strict=True)
            ]
        )
    yield _TRAILER


async def _acopy(raw: psycopg.AsyncConnection[Any], ids: list[int], rows: NewJobs) -> None:
    async with raw.cursor() as cur, cur.copy(COPY_JOBS) as copy:
        for data in copy_binary(ids, rows, raw.info.encoding):
            await copy.write(data)


def copy_jobs(conn: Connection, rows: NewJobs) -> list[int]:
    """COPY *rows* in on *conn* (sync, or an async one run through ``run_sync``); their ids."""
    ids: list[int] = conn.exec_driver_sql(NEXT_IDS, {"n": len(rows)}).scalar_one()
    raw = conn.connection.driver_connection
    try:
        if isinstance(raw, psycopg.AsyncConnection):
            await_only(_acopy(raw, ids, rows))
        else:
            assert isinstance(raw, psycopg.Connection)
            with raw.cursor() as cur, cur.copy(COPY_JOBS) as copy:
                for data in copy_binary(ids, rows, raw.info.encoding):
                    copy.write(data)
    except psycopg.Error as exc:
        # COPY runs on the driver's connection: its errors are made
        # SQLAlchemy's here, as every other enqueue path raises them.
        error, gone = translated(exc, raw, COPY_JOBS, None, conn.dialect)
        if gone:
            conn.invalidate(exc)
        raise error from exc
    return ids
