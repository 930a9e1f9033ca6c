"""PostgreSQL: ``FOR UPDATE SKIP LOCKED`` claims, server time, LISTEN/NOTIFY."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, ClassVar

from sqlalchemy import ColumnElement, Connection, Insert, func, literal, text
from sqlalchemy.dialects.postgresql import insert as pg_insert

from tenantry.isolation import postgres as pg
from tenantry.models import TENANTRY_SCHEMA
from tenantry.queue.backends.base import Lease, QueueBackend
from tenantry.queue.job import Job
from tenantry.queue.schema import jobs_table, queue_metadata

CHANNEL = "tenantry_jobs"


_TABLE = f"{TENANTRY_SCHEMA}.{jobs_table.name}"
_LEASES = "unnest(%(ids)s::bigint[], %(tokens)s::text[]) AS lease(id, token)"
# ``j.id = ANY(ids)`` lets the planner reach the rows by primary key; the join
# on the lease then fences each row on its token.
_FENCE = (
    "j.id = ANY(%(ids)s::bigint[]) AND j.id = lease.id"
    " AND j.lease_token = lease.token AND j.state = 'running'"
)

# The hot path is plain SQL: fixed statement texts skip SQLAlchemy's per-call
# statement building and let psycopg prepare them server-side after a few runs.
# ``id = ANY(ARRAY(subquery))`` runs the locking subquery once (an InitPlan)
# and reaches the chosen rows through the primary key. A join against a CTE
# would do too with a custom plan, but psycopg prepares the statement after a
# few runs and PostgreSQL's generic plan then guesses LIMIT $n at 1,000 rows
# and hash-joins the whole table: claim cost would grow with the table.
_CLAIM = f"""
UPDATE {_TABLE} AS j
SET state = 'running', attempt = j.attempt + 1, attempted_at = now(),
    lease_expires_at = now() + make_interval(secs => %(lease)s),
    lease_token = %(token)s, worker_id = %(worker)s
WHERE j.id = ANY(ARRAY(
    SELECT id FROM {_TABLE}
    WHERE state = 'available' AND {{queue_filter}}{{tenant_filter}}
    ORDER BY priority DESC, scheduled_at, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
))
RETURNING j.*
"""
_COMPLETE = f"""
UPDATE {_TABLE} AS j
SET state = 'completed', finished_at = now(), lease_expires_at = NULL, lease_token = NULL
FROM {_LEASES} WHERE {_FENCE}
RETURNING j.id
"""
_EXTEND = f"""
UPDATE {_TABLE} AS j SET lease_expires_at = now() + make_interval(secs => %(lease)s)
FROM {_LEASES} WHERE {_FENCE}
RETURNING j.id
"""
_RELEASE = f"""
UPDATE {_TABLE} AS j
SET state = 'available', attempt = j.attempt - 1, lease_expires_at = NULL,
    lease_token = NULL, worker_id = NULL
FROM {_LEASES} WHERE {_FENCE}
RETURNING j.id
"""


def _lease_params(leases: Sequence[Lease]) -> dict[str, Any]:
    return {"ids": [i for i, _ in leases], "tokens": [t for _, t in leases]}


# Bulk enqueue: one INSERT over parallel arrays (one bound parameter per
# column, however many rows), like River's and pgqueuer's UNNEST inserts.
_BULK_COLUMNS: tuple[tuple[str, str], ...] = (
    ("tenant_id", "text"),
    ("queue", "text"),
    ("kind", "text"),
    ("payload", "jsonb"),
    ("priority", "smallint"),
    ("state", "text"),
    ("attempt", "integer"),
    ("max_attempts", "integer"),
    ("scheduled_at", "timestamptz"),
    ("errors", "jsonb"),
    ("idempotency_key", "text"),
    ("correlation_id", "text"),
    ("created_at", "timestamptz"),
)
_BULK_INSERT = (
    f"INSERT INTO {_TABLE} ({', '.join(c for c, _ in _BULK_COLUMNS)}) "
    f"SELECT {', '.join(f'{c}::{t}' for c, t in _BULK_COLUMNS)} FROM unnest("
    + ", ".join(f"%({c})s::{'text' if t == 'jsonb' else t}[]" for c, t in _BULK_COLUMNS)
    + f") WITH ORDINALITY AS r({', '.join(c for c, _ in _BULK_COLUMNS)}, n) "
    "ORDER BY n RETURNING id"
)


class PostgresBackend(QueueBackend):
    dialect: ClassVar[str] = "postgresql"

    def insert_many_ids(self, conn: Connection, rows: list[dict[str, Any]]) -> list[int]:
        """One INSERT ... SELECT FROM unnest(arrays) for any number of rows.

        Rows are inserted in array order, so identity values are assigned in
        that order too: the returned ids, sorted, pair with the rows.
        """
        params: dict[str, list[Any]] = {c: [] for c, _ in _BULK_COLUMNS}
        for row in rows:
            for column, kind in _BULK_COLUMNS:
                value = row.get(column)
                params[column].append(json.dumps(value) if kind == "jsonb" else value)
        ids = conn.exec_driver_sql(_BULK_INSERT, params).scalars()
        return sorted(int(i) for i in ids)

    def claim(
        self,
        conn: Connection,
        *,
        worker_id: str,
        queues: Sequence[str],
        limit: int,
        lease_seconds: float,
        tenants: Sequence[str] | None = None,
    ) -> list[Job]:
        # One queue: a plain equality keeps the ordered partial-index scan.
        queue_filter = "queue = %(queue)s" if len(queues) == 1 else "queue = ANY(%(queues)s)"
        tenant_filter = " AND tenant_id = ANY(%(tenants)s)" if tenants is not None else ""
        sql = _CLAIM.format(queue_filter=queue_filter, tenant_filter=tenant_filter)
        params = {
            "queue": queues[0],
            "queues": list(queues),
            "tenants": list(tenants or ()),
            "limit": limit,
            "lease": lease_seconds,
            "token": str(uuid.uuid4()),
            "worker": worker_id,
        }
        jobs = [Job.from_row(r) for r in conn.exec_driver_sql(sql, params)]
        jobs.sort(key=lambda j: (-j.priority, j.scheduled_at, j.id))
        return jobs

    def complete(self, conn: Connection, leases: Sequence[Lease]) -> set[int]:
        if not leases:
            return set()
        return {int(i) for i in conn.exec_driver_sql(_COMPLETE, _lease_params(leases)).scalars()}

    def extend_leases(
        self, conn: Connection, leases: Sequence[Lease], lease_seconds: float
    ) -> set[int]:
        if not leases:
            return set()
        params = _lease_params(leases) | {"lease": lease_seconds}
        return {int(i) for i in conn.exec_driver_sql(_EXTEND, params).scalars()}

    def release(self, conn: Connection, leases: Sequence[Lease]) -> set[int]:
        if not leases:
            return set()
        return {int(i) for i in conn.exec_driver_sql(_RELEASE, _lease_params(leases)).scalars()}

    def now(self) -> ColumnElement[datetime]:
        # Server time, so leases mean the same thing to every worker host.
        return func.now()

    def now_plus(self, seconds: float) -> ColumnElement[datetime]:
        return func.now() + literal(timedelta(seconds=seconds))

    def insert(self) -> Insert:
        return pg_insert(jobs_table)

    def greatest(self, *values: Any) -> ColumnElement[int]:
        return func.greatest(*values)

    def lock_for_claim(self, query: Any) -> Any:
        return query.with_for_update(skip_locked=True)

    def notify(self, conn: Connection, queues: Iterable[str]) -> None:
        # One NOTIFY per enqueue statement; PostgreSQL also folds identical
        # notifications within a transaction, so a bulk enqueue wakes once.
        for queue in sorted(set(queues)):
            conn.execute(text("SELECT pg_notify(:c, :q)"), {"c": CHANNEL, "q": queue})

    def ensure_schema(self, conn: Connection, rls_role: str, app_user: str | None) -> None:
        """The jobs table, its grants and its row-level security.

        RLS on jobs is ENABLEd but not FORCEd: tenant sessions (the RLS role) see
        and enqueue only their own tenant's jobs, while the worker, connecting as
        the owner through the admin URL, claims across tenants.
        """
        pg.ddl_lock(conn)  # concurrent set-ups (two workers starting) would race
        conn.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {TENANTRY_SCHEMA}")
        queue_metadata.create_all(conn, checkfirst=True)
        pg.ensure_policy(conn, jobs_table.name, TENANTRY_SCHEMA, force=False)
        # Only the jobs table: the catalog in the same schema stays admin-only.
        pg.grant_access(conn, TENANTRY_SCHEMA, rls_role, app_user, table=jobs_table.name)
