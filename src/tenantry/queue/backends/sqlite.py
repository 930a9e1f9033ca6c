"""SQLite: ``BEGIN IMMEDIATE`` claims in WAL mode and an in-process wake-up.

SQLite has one writer at a time, so claiming takes the write lock up front
(``BEGIN IMMEDIATE``) instead of upgrading a read lock mid-statement, which
could fail with SQLITE_BUSY under contention. Times come from the process
clock (SQLite has no timezone-aware "now"), always UTC.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from sqlalchemy import JSON, ColumnElement, Connection, DateTime, Insert, event, func, literal
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine

from tenantry.queue.backends.base import QueueBackend
from tenantry.queue.job import utcnow
from tenantry.queue.schema import jobs_table, queue_metadata
from tenantry.queue.schema import jobs_table as J


class LocalWakeups:
    """Process-wide wake-up callbacks, keyed by database file.

    Workers in this process subscribe; enqueues call :meth:`fire` after their
    transaction commits. Callbacks must be thread-safe (the worker passes
    ``loop.call_soon_threadsafe(event.set)``).
    """

    def __init__(self) -> None:
        self._subscribers: dict[str, list[Callable[[], None]]] = {}
        self._lock = threading.Lock()

    def subscribe(self, key: str, callback: Callable[[], None]) -> Callable[[], None]:
        with self._lock:
            self._subscribers.setdefault(key, []).append(callback)

        def unsubscribe() -> None:
            with self._lock:
                subs = self._subscribers.get(key, [])
                if callback in subs:
                    subs.remove(callback)

        return unsubscribe

    def fire(self, key: str) -> None:
        with self._lock:
            callbacks = list(self._subscribers.get(key, ()))
        for callback in callbacks:
            callback()


wakeups = LocalWakeups()


def database_key(engine: Engine | Connection) -> str:
    return str(
        engine.engine.url.database if isinstance(engine, Connection) else engine.url.database
    )


_JSON_COLUMNS = frozenset(c.name for c in J.columns if isinstance(c.type, JSON))


def _sqlite_value(column: str, value: Any) -> Any:
    """A value as SQLAlchemy's SQLite types store it (JSON text, naive UTC text)."""
    if column in _JSON_COLUMNS:
        return json.dumps(value)
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")
    return value


class SqliteBackend(QueueBackend):
    dialect: ClassVar[str] = "sqlite"
    write_options: ClassVar[dict[str, str]] = {"sqlite_begin": "BEGIN IMMEDIATE"}

    def now(self) -> ColumnElement[datetime]:
        return literal(utcnow(), DateTime(timezone=True))

    def now_plus(self, seconds: float) -> ColumnElement[datetime]:
        return literal(utcnow() + timedelta(seconds=seconds), DateTime(timezone=True))

    def insert(self) -> Insert:
        return sqlite_insert(jobs_table)

    def greatest(self, *values: Any) -> ColumnElement[int]:
        return func.max(*values)  # SQLite's multi-argument max() is a scalar function

    def insert_many_ids(self, conn: Connection, rows: list[dict[str, Any]]) -> list[int]:
        """One multi-row INSERT per chunk, written as plain SQL, ids paired by order.

        SQLAlchemy cannot promise RETURNING order on SQLite (it would fall back
        to a statement per row), and compiling a many-row ``VALUES`` construct
        costs more than the insert itself. Within one INSERT under SQLite's
        single write lock, an INTEGER PRIMARY KEY is assigned in VALUES order,
        so the sorted returned ids match the rows.
        """
        columns = list(rows[0])
        # SQLite caps bound parameters per statement (32766): stay well below.
        per_chunk = max(1, 30000 // len(columns))
        names = ", ".join(columns)
        one = "(" + ", ".join("?" for _ in columns) + ")"
        ids: list[int] = []
        for start in range(0, len(rows), per_chunk):
            chunk = rows[start : start + per_chunk]
            sql = (
                f"INSERT INTO {J.name} ({names}) VALUES "
                + ", ".join(one for _ in chunk)
                + " RETURNING id"
            )
            params = tuple(_sqlite_value(c, row[c]) for row in chunk for c in columns)
            ids.extend(sorted(int(i) for i in conn.exec_driver_sql(sql, params).scalars()))
        return ids

    def notify(self, conn: Connection, queues: Iterable[str]) -> None:
        key = database_key(conn)
        if not conn.in_transaction():
            wakeups.fire(key)
            return
        # Fire once the surrounding transaction commits (a stray wake-up after a
        # rollback costs one empty claim; a missed one would cost a poll interval).
        event.listen(conn, "commit", lambda _c: wakeups.fire(key), once=True)

    def ensure_schema(self, conn: Connection, rls_role: str, app_user: str | None) -> None:
        queue_metadata.create_all(conn, checkfirst=True)
