"""The queue statements both drivers run as SQLAlchemy Core: the ones off the hot path.

Failures, postponements, staging, rescue, tenant clean-up, pruning and the
keyed (idempotent) insert are the same on every database but for a few
spellings (what "now" is, how rows are locked, the dialect's INSERT), which a
driver hands in as a ``Flavour``. The hot statements (claims, lease updates,
bulk inserts) are each driver's own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Connection, Engine, Insert, Select, delete, select, text
from sqlalchemy import update as sql_update
from sqlalchemy.ext.asyncio import AsyncEngine

from tenantry.errors import InvariantError
from tenantry.queue.drivers.base import Inserted
from tenantry.queue.job import PENDING_STATES, Job, JobState, utcnow
from tenantry.queue.schema import IDEMPOTENCY_PREDICATE
from tenantry.queue.schema import jobs_table as J

#: Tries of a keyed insert whose competitor finished between its two statements.
KEYED_INSERT_TRIES = 5


@dataclass(frozen=True)
class Flavour:
    """What differs between dialects in the shared statements."""

    now: Callable[[], ColumnElement[datetime]]
    insert: Callable[[], Insert]
    greatest: Callable[..., ColumnElement[int]]
    #: Lock the rows a maintenance query picks, so two workers do not both act on them.
    lock: Callable[[Select[Any]], Select[Any]]


class CoreSql:
    """The shared statements, for one dialect's ``Flavour``."""

    def __init__(self, flavour: Flavour) -> None:
        self.flavour = flavour

    def now(self) -> ColumnElement[datetime]:
        return self.flavour.now()

    def one_more_attempt(self) -> ColumnElement[int]:
        return self.flavour.greatest(J.c.max_attempts, J.c.attempt + 1)

    # -- enqueue -------------------------------------------------------------------
    def insert_jobs(
        self,
        conn: Connection,
        rows: Sequence[dict[str, Any]],
        insert_many: Callable[[Connection, list[dict[str, Any]]], list[int]],
    ) -> list[Inserted]:
        """Keyless rows through *insert_many* (their ids in row order); keyed ones one by one."""
        plain = [r for r in rows if r.get("idempotency_key") is None]
        results: dict[int, Inserted] = {}
        if plain:
            ids = insert_many(conn, plain)
            for index, job_id in zip(
                (i for i, r in enumerate(rows) if r.get("idempotency_key") is None),
                ids,
                strict=True,
            ):
                results[index] = Inserted(int(job_id), True)
        for index, row in enumerate(rows):
            if row.get("idempotency_key") is not None:
                results[index] = self.insert_keyed(conn, row)
        return [results[i] for i in range(len(rows))]

    def insert_keyed(self, conn: Connection, row: dict[str, Any]) -> Inserted:
        """One row with an idempotency key: the new job, or the unfinished one holding the key.

        ``ON CONFLICT DO NOTHING`` against the partial unique index, so two
        concurrent enqueues with the same key cannot both insert: the loser
        gets the winner's id (after the winner commits, on PostgreSQL).
        """
        stmt = (
            self.flavour.insert()
            .values(**row)
            .on_conflict_do_nothing(  # type: ignore[attr-defined]
                index_elements=[J.c.tenant_id, J.c.idempotency_key],
                index_where=text(IDEMPOTENCY_PREDICATE),
            )
            .returning(J.c.id)
        )
        for _ in range(KEYED_INSERT_TRIES):
            new_id = conn.execute(stmt).scalar()
            if new_id is not None:
                return Inserted(int(new_id), True)
            existing = conn.execute(
                select(J.c.id, J.c.kind, J.c.queue, J.c.state).where(
                    J.c.tenant_id == row["tenant_id"],
                    J.c.idempotency_key == row["idempotency_key"],
                    J.c.state.in_([s.value for s in PENDING_STATES]),
                )
            ).first()
            if existing is not None:
                return Inserted(int(existing.id), False, dict(existing._mapping))
            # The holder finished between the two statements: try to insert again.
        raise InvariantError(f"idempotent enqueue did not settle after {KEYED_INSERT_TRIES} tries")

    # -- outcomes --------------------------------------------------------------------
    def fail(
        self,
        conn: Connection,
        job: Job,
        error: dict[str, Any],
        *,
        retry_at: datetime | None,
        dead: bool = False,
    ) -> bool:
        values: dict[str, Any] = {
            "errors": [*job.errors, error],
            "lease_expires_at": None,
            "lease_token": None,
        }
        if dead or retry_at is None:
            values.update(state=JobState.DEAD.value, finished_at=self.now())
        else:
            values.update(state=JobState.RETRYABLE.value, scheduled_at=retry_at)
        return self._fenced_one(conn, job, **values)

    def postpone(self, conn: Connection, job: Job, until: datetime) -> bool:
        """Used when the job's tenant cannot be served right now (suspended): it waits."""
        return self._fenced_one(
            conn,
            job,
            state=JobState.SCHEDULED.value,
            attempt=J.c.attempt - 1,
            scheduled_at=until,
            lease_expires_at=None,
            lease_token=None,
            worker_id=None,
        )

    def _fenced_one(self, conn: Connection, job: Job, **values: Any) -> bool:
        """UPDATE one job only if it is still running under this attempt's lease."""
        result = conn.execute(
            sql_update(J)
            .where(
                J.c.id == job.id,
                J.c.lease_token == job.lease_token,
                J.c.state == JobState.RUNNING.value,
            )
            .values(**values)
        )
        return result.rowcount == 1

    # -- maintenance -------------------------------------------------------------------
    def stage_due(self, conn: Connection, limit: int = 5000) -> int:
        due = self.flavour.lock(
            select(J.c.id)
            .where(
                J.c.state.in_([JobState.SCHEDULED.value, JobState.RETRYABLE.value]),
                J.c.scheduled_at <= self.now(),
            )
            .limit(limit)
        ).cte("due")
        result = conn.execute(
            sql_update(J).where(J.c.id.in_(select(due.c.id))).values(state=JobState.AVAILABLE.value)
        )
        return int(result.rowcount or 0)

    def rescue_expired(self, conn: Connection, limit: int = 500) -> list[tuple[int, JobState]]:
        expired = self.flavour.lock(
            select(J)
            .where(J.c.state == JobState.RUNNING.value, J.c.lease_expires_at < self.now())
            .order_by(J.c.lease_expires_at)
            .limit(limit)
        )
        outcomes: list[tuple[int, JobState]] = []
        for row in conn.execute(expired).all():
            job = Job.from_row(row)
            error = {
                "at": utcnow().isoformat(),
                "attempt": job.attempt,
                "type": "LeaseExpired",
                "message": f"worker {job.worker_id} stopped renewing its lease (crashed or hung)",
                "traceback": "",
            }
            dead = job.attempt >= job.max_attempts
            state = JobState.DEAD if dead else JobState.AVAILABLE
            conn.execute(
                sql_update(J)
                .where(J.c.id == job.id, J.c.lease_token == job.lease_token)
                .values(
                    state=state.value,
                    errors=[*job.errors, error],
                    lease_expires_at=None,
                    lease_token=None,
                    worker_id=None,
                    finished_at=self.now() if dead else None,
                )
            )
            outcomes.append((job.id, state))
        return outcomes

    # -- tenants and operations -----------------------------------------------------------
    def cancel_tenant_jobs(self, conn: Connection, tenant_id: str) -> int:
        """A running job's outcome is then void: its completion is fenced on
        ``state = 'running'``, and the worker's heartbeat tells the handler."""
        result = conn.execute(
            sql_update(J)
            .where(J.c.tenant_id == tenant_id, J.c.state.in_([s.value for s in PENDING_STATES]))
            .values(
                state=JobState.CANCELLED.value,
                finished_at=self.now(),
                lease_expires_at=None,
                lease_token=None,
            )
        )
        return int(result.rowcount or 0)

    def delete_tenant_jobs(self, conn: Connection, tenant_id: str) -> int:
        return int(conn.execute(delete(J).where(J.c.tenant_id == tenant_id)).rowcount or 0)

    def prune_finished(self, conn: Connection, older_than: timedelta, limit: int) -> int:
        cutoff = utcnow() - older_than
        batch = (
            select(J.c.id)
            .where(J.c.finished_at.is_not(None), J.c.finished_at < cutoff)
            .limit(limit)
            .scalar_subquery()
        )
        return int(conn.execute(delete(J).where(J.c.id.in_(batch))).rowcount or 0)


def write_in_transaction(
    write: Callable[..., Sequence[Inserted]], engine: Engine, rows: Sequence[dict[str, Any]]
) -> Sequence[Inserted]:
    """A standalone write as ``write(conn, rows, owner=True)`` in a transaction of its own."""
    with engine.begin() as conn:
        return write(conn, rows, owner=True)


async def awrite_in_transaction(
    write: Callable[..., Sequence[Inserted]], engine: AsyncEngine, rows: Sequence[dict[str, Any]]
) -> Sequence[Inserted]:
    """``write_in_transaction`` on an async engine."""
    async with engine.begin() as aconn:
        return await aconn.run_sync(lambda conn: write(conn, rows, owner=True))
