"""PostgreSQL: ``FOR UPDATE SKIP LOCKED`` claims, server time, LISTEN/NOTIFY."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any, ClassVar

from sqlalchemy import ColumnElement, Connection, Insert, func, literal, text
from sqlalchemy.dialects.postgresql import insert as pg_insert

from tenantry.isolation import postgres as pg
from tenantry.models import TENANTRY_SCHEMA
from tenantry.queue.backends.base import QueueBackend
from tenantry.queue.schema import jobs_table, queue_metadata

CHANNEL = "tenantry_jobs"


class PostgresBackend(QueueBackend):
    dialect: ClassVar[str] = "postgresql"

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
        conn.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {TENANTRY_SCHEMA}")
        queue_metadata.create_all(conn, checkfirst=True)
        table = f"{TENANTRY_SCHEMA}.{jobs_table.name}"
        conn.exec_driver_sql(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        pg.create_policy(conn, table)
        pg.grant_access(conn, TENANTRY_SCHEMA, rls_role, app_user)
