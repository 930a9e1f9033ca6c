"""The one-job standalone enqueue at libpq's level, and psycopg errors made SQLAlchemy's.

psycopg's own execute (its query conversion, its statement cache, its result
objects) costs more CPU per statement than libpq's ``PQexecPrepared`` with a
statement prepared once per connection under a name of tenantry's own
(measured: see docs/performance.md). libpq releases the GIL while it waits,
as psycopg does. Callers past SQLAlchemy's error handling (this path, COPY,
the claim's cursor) translate psycopg's errors with ``translated``, so every
enqueue path raises SQLAlchemy's exception types.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import psycopg
from sqlalchemy.engine.interfaces import Dialect
from sqlalchemy.exc import DBAPIError

from tenantry.queue.drivers.base import NewJobs
from tenantry.queue.drivers.postgres.queries import CHANNEL, INSERT_ONE_LIBPQ
from tenantry.queue.drivers.postgres.rows import WRITTEN

_ONE_NAME = b"tenantry_enqueue_one"
#: Set in a pooled connection's ``info`` once ``_ONE_NAME`` is prepared on it.
_ONE_PREPARED = "tenantry_enqueue_one_prepared"
IDLE = psycopg.pq.TransactionStatus.IDLE


def one_row_params(rows: Sequence[Mapping[str, Any]]) -> list[Any]:
    """The positional parameters of ``INSERT_ONE_NOTIFY`` for the one row of *rows*."""
    if isinstance(rows, NewJobs):
        row: Mapping[str, Any] = rows.common
        payload = rows.payload_texts()[0].decode()
    else:
        row = rows[0]
        payload = json.dumps(row["payload"])
    params = [
        payload
        if column == "payload"
        else json.dumps(row[column])
        if kind == "jsonb"
        else row.get(column)
        for column, kind in WRITTEN
    ]
    params += [CHANNEL, row["queue"]]
    return params


def text_params(params: list[Any], encoding: str) -> list[bytes | None] | None:
    """*params* in PostgreSQL's text input format; None if one holds a NUL.

    libpq reads a text parameter up to its first NUL: such a value takes
    psycopg's path, which refuses it with psycopg's own error.
    """
    values: list[bytes | None] = []
    for value in params:
        if value is None:
            values.append(None)
            continue
        text = value.isoformat() if isinstance(value, datetime) else str(value)
        if "\x00" in text:
            return None
        values.append(text.encode(encoding))
    return values


def _result_error(result: psycopg.pq.abc.PGresult, raw: psycopg.Connection[Any]) -> psycopg.Error:
    """The error a failed libpq result stands for, as psycopg would raise it."""
    if raw.pgconn.status == psycopg.pq.ConnStatus.BAD:
        # libpq's own result for a lost server has no SQLSTATE; psycopg
        # raises OperationalError for it, and so do we.
        message = result.error_message.decode(raw.info.encoding, "replace").strip()
        return psycopg.OperationalError(f"the connection was lost: {message}")
    return psycopg.errors.error_from_result(result, encoding=raw.info.encoding)


def insert_one(fairy: Any, raw: psycopg.Connection[Any], values: list[bytes | None]) -> int:
    """Run the prepared one-row statement with libpq and return the job's id.

    The connection is idle (not in a transaction), so the statement commits
    on its own.
    """
    if not fairy.info.get(_ONE_PREPARED):
        _prepare_one(fairy, raw)
    # None is NULL to libpq, as psycopg's own calls pass it; the stub omits it.
    result = raw.pgconn.exec_prepared(_ONE_NAME, values)  # type: ignore[arg-type]
    if result.error_field(psycopg.pq.DiagnosticField.SQLSTATE) == b"26000":
        # Deallocated under us (DISCARD ALL, say): prepare it again, once.
        _prepare_one(fairy, raw)
        result = raw.pgconn.exec_prepared(_ONE_NAME, values)  # type: ignore[arg-type]
    if result.status != psycopg.pq.ExecStatus.TUPLES_OK:
        raise _result_error(result, raw)
    return int(result.get_value(0, 0) or b"")


def _prepare_one(fairy: Any, raw: psycopg.Connection[Any]) -> None:
    prepared = raw.pgconn.prepare(_ONE_NAME, INSERT_ONE_LIBPQ.encode())
    if prepared.status != psycopg.pq.ExecStatus.COMMAND_OK:
        raise _result_error(prepared, raw)
    fairy.info[_ONE_PREPARED] = True


def translated(
    exc: psycopg.Error, raw: Any, statement: str, params: Any, dialect: Dialect
) -> tuple[DBAPIError, bool]:
    """*exc* as SQLAlchemy would raise it, and whether the connection is gone.

    Callers (``_reported_unavailable``) expect SQLAlchemy's exception classes
    (``OperationalError``, ``IntegrityError``...) and its
    ``connection_invalidated``, as the generic path gives them.
    """
    gone = dialect.is_disconnect(exc, raw, None)  # type: ignore[arg-type]  # psycopg is the DBAPI
    error = DBAPIError.instance(
        statement, params, exc, psycopg.Error, connection_invalidated=gone, dialect=dialect
    )
    assert isinstance(error, DBAPIError)
    return error, gone
