"""SQLite: ``BEGIN IMMEDIATE`` claims in WAL mode and an in-process wake-up.

SQLite has one writer at a time, so claiming takes the write lock up front
(``BEGIN IMMEDIATE``) instead of upgrading a read lock mid-statement, which
could fail with SQLITE_BUSY under contention. Times come from the process
clock (SQLite has no timezone-aware "now"), always UTC.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    ColumnElement,
    Connection,
    DateTime,
    Insert,
    event,
    func,
    literal,
    select,
    update,
)
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine

from tenantry.queue.backends.base import QueueBackend
from tenantry.queue.fairness import (
    Contender,
    rate_allowance,
    rate_tokens,
    shares,
    virtual_key,
)
from tenantry.queue.job import Job, as_utc, utcnow
from tenantry.queue.schema import control_table, create_queue_tables, jobs_table
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


def _chunks(items: list[str], size: int = 500) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _parse_time(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromisoformat(str(value)).replace(tzinfo=UTC)


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

    def claim_fair(
        self,
        conn: Connection,
        *,
        worker_id: str,
        queues: Sequence[str],
        limit: int,
        lease_seconds: float,
        tenants: Sequence[str] | None,
        held: Mapping[str, float] | None = None,
        check_limits: bool = True,
        after: str = "",
    ) -> list[Job]:
        """The fair claim in steps: the claim holds SQLite's one write lock
        (``BEGIN IMMEDIATE``), so nothing changes between the steps and the
        counts are exact without the row locks PostgreSQL needs. An embedded
        database serves few tenants: every busy tenant is looked at (no
        window, ``after`` is not needed).
        """
        heads = self._busy_tenants(conn, queues, tenants)
        if not heads:
            return []
        busy = list(heads)
        held = held or {}
        now = utcnow()
        controls = {
            row["tenant_id"]: row
            for chunk in _chunks(busy)
            for row in conn.execute(
                select(control_table).where(control_table.c.tenant_id.in_(chunk))
            ).mappings()
        }
        limited = [t for t in busy if t in controls and controls[t]["max_running"] is not None]
        running: dict[str, int] = {}
        for chunk in _chunks(limited):
            marks = ", ".join("?" for _ in chunk)
            for tenant_id, n in conn.exec_driver_sql(
                f"SELECT tenant_id, count(*) FROM {J.name} WHERE state = 'running' "
                f"AND tenant_id IN ({marks}) GROUP BY tenant_id",
                tuple(chunk),
            ):
                running[tenant_id] = int(n)
        allowances: dict[str, int] = {}
        levels: dict[str, float] = {}
        for tenant_id in busy:
            ctl = controls.get(tenant_id)
            allowance = limit
            if ctl is not None:
                if ctl["paused"]:
                    continue
                if ctl["max_running"] is not None:
                    allowance = min(allowance, ctl["max_running"] - running.get(tenant_id, 0))
                if ctl["rate"] is not None:
                    level = rate_tokens(
                        ctl["tokens"],
                        as_utc(ctl["refilled_at"]),
                        now,
                        ctl["rate"],
                        ctl["burst"] or 1.0,
                    )
                    levels[tenant_id] = level
                    allowance = min(allowance, rate_allowance(level))
            if allowance > 0:
                allowances[tenant_id] = allowance
        weights = {t: int(controls[t]["weight"]) if t in controls else 1 for t in allowances}
        # Only the `limit` tenants whose first job comes first can get a place.
        firsts = sorted(
            allowances,
            key=lambda t: (virtual_key(held.get(t, 0), 1, weights[t]), heads[t], t),
        )[:limit]
        candidates = self._candidates(conn, queues, {t: allowances[t] for t in firsts})
        contenders = [
            Contender(
                tenant_id=tenant_id,
                weight=weights[tenant_id],
                running=held.get(tenant_id, 0),
                allowance=len(rows),
                head=heads[tenant_id],
            )
            for tenant_id, rows in candidates.items()
            if rows
        ]
        quota = shares(contenders, limit)
        ids = [r[0] for t, q in quota.items() for r in candidates[t][:q]]
        if not ids:
            return []
        jobs = self.mark_claimed(
            conn,
            J.c.id.in_(ids),
            worker_id=worker_id,
            lease_seconds=lease_seconds,
            started_at=now,  # the instant the buckets were read at
        )
        for tenant_id, level in levels.items():
            started = quota.get(tenant_id, 0)
            if started:
                conn.execute(
                    update(control_table)
                    .where(control_table.c.tenant_id == tenant_id)
                    .values(tokens=level - started, refilled_at=now)
                )
        return jobs

    @staticmethod
    def _busy_tenants(
        conn: Connection, queues: Sequence[str], tenants: Sequence[str] | None
    ) -> dict[str, datetime]:
        """Tenants with runnable jobs, with when their next job (by priority) became due.

        A loose index scan: one probe per tenant, however long its backlog is.
        """
        q = ", ".join("?" for _ in queues)
        wanted = f" AND tenant_id IN ({', '.join('?' for _ in tenants)})" if tenants else ""
        probe = (
            f"SELECT tenant_id FROM {J.name} WHERE state = 'available' AND queue IN ({q})"
            f"{wanted} AND tenant_id > {{after}} ORDER BY tenant_id LIMIT 1"
        )
        first, step = probe.format(after="''"), probe.format(after="busy.t")
        head = (
            f"SELECT scheduled_at FROM {J.name} WHERE state = 'available' AND queue IN ({q}) "
            "AND tenant_id = busy.t ORDER BY priority DESC, scheduled_at, id LIMIT 1"
        )
        sql = (
            f"WITH RECURSIVE busy(t) AS (SELECT ({first}) "
            f"UNION ALL SELECT ({step}) FROM busy "
            f"WHERE busy.t IS NOT NULL) SELECT t, ({head}) FROM busy WHERE t IS NOT NULL"
        )
        if tenants is not None and not tenants:
            return {}
        params = (*queues, *(tenants or ()), *queues, *(tenants or ()), *queues)
        return {str(t): _parse_time(h) for t, h in conn.exec_driver_sql(sql, params)}

    @staticmethod
    def _candidates(
        conn: Connection, queues: Sequence[str], allowances: dict[str, int]
    ) -> dict[str, list[tuple[int, datetime]]]:
        """Each tenant's next jobs (up to its allowance) in priority order."""
        found: dict[str, list[tuple[int, datetime]]] = {t: [] for t in allowances}
        q = ", ".join("?" for _ in queues)
        one = (
            f"SELECT * FROM (SELECT id, tenant_id, scheduled_at FROM {J.name} "
            f"WHERE state = 'available' AND queue IN ({q}) AND tenant_id = ? "
            "ORDER BY priority DESC, scheduled_at, id LIMIT ?)"
        )
        # SQLite allows at most 500 terms in one compound SELECT.
        for chunk in _chunks(list(allowances), 400):
            sql = " UNION ALL ".join(one for _ in chunk)
            params = tuple(p for t in chunk for p in (*queues, t, allowances[t]))
            for job_id, tenant_id, scheduled_at in conn.exec_driver_sql(sql, params):
                found[tenant_id].append((int(job_id), _parse_time(scheduled_at)))
        return found

    def notify(self, conn: Connection, queues: Iterable[str]) -> None:
        key = database_key(conn)
        if not conn.in_transaction():
            wakeups.fire(key)
            return
        # Fire once the surrounding transaction commits (a stray wake-up after a
        # rollback costs one empty claim; a missed one would cost a poll interval).
        event.listen(conn, "commit", lambda _c: wakeups.fire(key), once=True)

    def ensure_schema(self, conn: Connection, rls_role: str, app_user: str | None) -> None:
        create_queue_tables(conn)
