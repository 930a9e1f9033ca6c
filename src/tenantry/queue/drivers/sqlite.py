"""SQLite driver: ``BEGIN IMMEDIATE`` claims in WAL mode and an in-process wake-up.

SQLite has one writer at a time, so claiming takes the write lock up front
(``BEGIN IMMEDIATE``) instead of upgrading a read lock mid-statement, which
could fail with SQLITE_BUSY under contention. Times come from the process
clock (SQLite has no timezone-aware "now"), always UTC.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    ColumnElement,
    Connection,
    DateTime,
    event,
    func,
    literal,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from tenantry.queue.drivers.base import ClaimRequest, Inserted, Lease
from tenantry.queue.drivers.core import (
    CoreSql,
    Flavour,
    awrite_in_transaction,
    write_in_transaction,
)
from tenantry.queue.fairness import (
    Contender,
    interleave,
    rate_allowance,
    rate_tokens,
    shares,
    virtual_key,
)
from tenantry.queue.job import Job, JobState, as_utc, utcnow
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


class SqliteDriver(CoreSql):
    dialect: ClassVar[str] = "sqlite"
    write_options: ClassVar[Mapping[str, Any]] = {"sqlite_begin": "BEGIN IMMEDIATE"}

    def __init__(self) -> None:
        super().__init__(
            Flavour(
                now=lambda: literal(utcnow(), DateTime(timezone=True)),
                insert=lambda: sqlite_insert(jobs_table),
                # SQLite's multi-argument max() is a scalar function.
                greatest=func.max,
                # One writer at a time (BEGIN IMMEDIATE): nothing to lock.
                lock=lambda query: query,
            )
        )

    def _now_plus(self, seconds: float) -> ColumnElement[datetime]:
        return literal(utcnow() + timedelta(seconds=seconds), DateTime(timezone=True))

    def ensure_schema(self, conn: Connection, grantee: str) -> None:
        create_queue_tables(conn)

    # -- enqueue -------------------------------------------------------------------
    def write_jobs(
        self, conn: Connection, rows: Sequence[dict[str, Any]], *, owner: bool = False
    ) -> Sequence[Inserted]:
        inserted = self.insert_jobs(conn, rows, self._insert_many_ids)
        self._notify(conn)
        return inserted

    def write_standalone(
        self, engine: Engine, rows: Sequence[dict[str, Any]]
    ) -> Sequence[Inserted]:
        return write_in_transaction(self.write_jobs, engine, rows)

    async def awrite_standalone(
        self, engine: AsyncEngine, rows: Sequence[dict[str, Any]]
    ) -> Sequence[Inserted]:
        return await awrite_in_transaction(self.write_jobs, engine, rows)

    def _insert_many_ids(self, conn: Connection, rows: list[dict[str, Any]]) -> list[int]:
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

    # -- claiming ----------------------------------------------------------------------
    def claims_in_one_statement(self, *, fair: bool) -> bool:
        return False

    @contextmanager
    def claim_connection(self, engine: Engine, *, alone: bool) -> Iterator[Connection]:
        with engine.begin() as conn:
            yield conn

    def claim(self, conn: Connection, request: ClaimRequest) -> list[Job]:
        if request.fair:
            return self._claim_fair(conn, request)
        return self._claim_fifo(conn, request)

    def _claim_fifo(self, conn: Connection, request: ClaimRequest) -> list[Job]:
        """Strict ``priority DESC, scheduled_at, id`` over all tenants."""
        candidates = (
            select(J.c.id)
            .where(J.c.state == JobState.AVAILABLE.value, J.c.queue.in_(list(request.queues)))
            .order_by(J.c.priority.desc(), J.c.scheduled_at, J.c.id)
            .limit(request.limit)
        )
        if request.tenants is not None:
            candidates = candidates.where(J.c.tenant_id.in_(list(request.tenants)))
        chosen = candidates.cte("chosen")
        return self._mark_claimed(conn, J.c.id.in_(select(chosen.c.id)), request)

    def _mark_claimed(
        self,
        conn: Connection,
        where: ColumnElement[bool],
        request: ClaimRequest,
        *,
        started_at: datetime | None = None,
    ) -> list[Job]:
        """Move the rows to running; *started_at*: the instant a rate limit counted them at.

        A claim that draws rate-limit tokens stamps its starts with the
        instant the bucket was read: a fresh clock reading here came later by
        however long the claim's queries took in between (under load, more
        than a token's worth), and starts then looked closer together than
        the bucket let them be.
        """
        stmt = (
            update(J)
            .where(where)
            .values(
                state=JobState.RUNNING.value,
                attempt=J.c.attempt + 1,
                attempted_at=self.now() if started_at is None else started_at,
                lease_expires_at=self._now_plus(request.lease_seconds),
                lease_token=str(uuid.uuid4()),
                worker_id=request.worker_id,
            )
            .returning(*J.c)
        )
        return interleave([Job.from_row(r) for r in conn.execute(stmt)])

    def _claim_fair(self, conn: Connection, request: ClaimRequest) -> list[Job]:
        """The fair claim in steps: the claim holds SQLite's one write lock
        (``BEGIN IMMEDIATE``), so nothing changes between the steps and the
        counts are exact without the row locks PostgreSQL needs. An embedded
        database serves few tenants: every busy tenant is looked at (no
        window, ``after`` is not needed).
        """
        queues, limit = request.queues, request.limit
        heads = self._busy_tenants(conn, queues, request.tenants)
        if not heads:
            return []
        busy = list(heads)
        held = request.held or {}
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
        jobs = self._mark_claimed(
            conn,
            J.c.id.in_(ids),
            request,
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

    # -- outcomes, fenced on the lease ---------------------------------------------------
    def complete(self, conn: Connection, leases: Sequence[Lease]) -> set[int]:
        return self._fenced_update(
            conn,
            leases,
            state=JobState.COMPLETED.value,
            finished_at=self.now(),
            lease_expires_at=None,
            lease_token=None,
        )

    def extend(self, conn: Connection, leases: Sequence[Lease], lease_seconds: float) -> set[int]:
        return self._fenced_update(conn, leases, lease_expires_at=self._now_plus(lease_seconds))

    def release(self, conn: Connection, leases: Sequence[Lease]) -> set[int]:
        return self._fenced_update(
            conn,
            leases,
            state=JobState.AVAILABLE.value,
            attempt=J.c.attempt - 1,
            lease_expires_at=None,
            lease_token=None,
            worker_id=None,
        )

    def _fenced_update(self, conn: Connection, leases: Sequence[Lease], **values: Any) -> set[int]:
        """UPDATE only rows still running under the given (id, lease token) pairs."""
        if not leases:
            return set()
        stmt = (
            update(J)
            .where(
                tuple_(J.c.id, J.c.lease_token).in_(list(leases)),
                J.c.state == JobState.RUNNING.value,
            )
            .values(**values)
            .returning(J.c.id)
        )
        return {int(i) for i in conn.execute(stmt).scalars()}

    def _notify(self, conn: Connection) -> None:
        """Wake this process's workers on the database once the transaction commits."""
        key = database_key(conn)
        if not conn.in_transaction():
            wakeups.fire(key)
            return
        # Fire once the surrounding transaction commits (a stray wake-up after a
        # rollback costs one empty claim; a missed one would cost a poll interval).
        event.listen(conn, "commit", lambda _c: wakeups.fire(key), once=True)
