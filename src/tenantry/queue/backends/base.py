"""The queue's SQL, behind one small class per database dialect.

Everything that is the same on every database is written once here with
SQLAlchemy Core (the ``tenantry`` schema is translated away on SQLite by the
store's engines). A dialect class supplies only what differs: how "now" is
spelled, how rows are locked for claiming, the idempotent insert, DDL and
wake-ups. Methods take a *sync* ``Connection``; async callers run them through
``AsyncConnection.run_sync`` so there is one implementation, not two.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ClassVar, overload

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Insert,
    delete,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from tenantry.queue.enqueued import ByIds
from tenantry.queue.fairness import interleave
from tenantry.queue.job import PENDING_STATES, Job, JobState, utcnow
from tenantry.queue.registry import Handler
from tenantry.queue.schema import IDEMPOTENCY_PREDICATE
from tenantry.queue.schema import jobs_table as J

Lease = tuple[int, str]  # (job id, lease token)


@dataclass(frozen=True)
class Inserted:
    id: int
    created: bool  # False: an unfinished job with the same idempotency key was returned
    existing: dict[str, Any] | None = None  # kind, queue, state of that existing job


class Created(ByIds[Inserted]):
    """Jobs just inserted, by id: each reads as ``Inserted(id, True)``, made when read.

    A bulk write returns thousands of these and the client needs only the
    ids (``ids``), so no object is made per job on the way.
    """

    __slots__ = ()

    @property
    def ids(self) -> Sequence[int]:
        return self._ids

    def _item(self, job_id: int) -> Inserted:
        return Inserted(job_id, True)


class NewJobs(Sequence[dict[str, Any]]):
    """The rows of one enqueue call: the columns its jobs share, and their payloads.

    Within one ``enqueue_many`` every column but the payload is the same for
    each job, so it is kept once (``common``, with ``payload`` None) beside
    the validated payloads. Generic write paths see a sequence of row dicts,
    made once on first use, exactly as they were before; PostgreSQL's paths
    read ``common`` and ``payload_texts()`` instead and never make them, which
    is most of what a large ``enqueue_many`` cost in Python.
    """

    __slots__ = ("_handler", "_rows", "_texts", "_values", "common")

    def __init__(self, common: dict[str, Any], values: list[Any], handler: Handler) -> None:
        self.common = common
        self._values = values
        self._handler = handler
        self._rows: list[dict[str, Any]] | None = None
        self._texts: list[bytes] | None = None

    @property
    def queue(self) -> str:
        return str(self.common["queue"])

    def payload_texts(self, start: int = 0, stop: int | None = None) -> list[bytes]:
        """Payloads ``start:stop`` as JSON text (ASCII), see ``Handler.json_text``.

        A slice is made on demand, so a COPY can serialize each chunk while
        the server is still writing the one before; all of them are kept.
        """
        if self._texts is not None:
            return self._texts[start:stop]
        json_text = self._handler.json_text
        texts = [json_text(v) for v in self._values[start:stop]]
        if start == 0 and stop is None:
            self._texts = texts
        return texts

    def rows(self) -> list[dict[str, Any]]:
        """The row dicts, ``payload`` decoded from its JSON text (``Handler.json_text``).

        Made from the JSON texts, so every write path refuses what
        ``Handler.json_text`` refuses (a payload PostgreSQL cannot store)
        and stores the same value.
        """
        if self._rows is None:
            common = self.common
            self._rows = []
            for text in self.payload_texts():
                row = common.copy()
                row["payload"] = json.loads(text)
                self._rows.append(row)
        return self._rows

    def __len__(self) -> int:
        return len(self._values)

    @overload
    def __getitem__(self, index: int) -> dict[str, Any]: ...
    @overload
    def __getitem__(self, index: slice) -> list[dict[str, Any]]: ...
    def __getitem__(self, index: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        return self.rows()[index]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.rows())


def is_keyless(rows: Sequence[Mapping[str, Any]]) -> bool:
    """No row has an idempotency key (read once for a ``NewJobs``)."""
    if isinstance(rows, NewJobs):
        return rows.common.get("idempotency_key") is None
    return all(r.get("idempotency_key") is None for r in rows)


class QueueBackend:
    """SQL shared by all dialects; subclasses fill in the differences."""

    dialect: ClassVar[str]
    #: Execution options for queue write transactions (SQLite: BEGIN IMMEDIATE).
    write_options: ClassVar[dict[str, Any]] = {}

    # -- dialect hooks ---------------------------------------------------------
    def now(self) -> ColumnElement[datetime]:
        raise NotImplementedError

    def now_plus(self, seconds: float) -> ColumnElement[datetime]:
        raise NotImplementedError

    def insert(self) -> Insert:
        raise NotImplementedError

    def greatest(self, *values: Any) -> ColumnElement[int]:
        raise NotImplementedError

    def one_more_attempt(self) -> ColumnElement[int]:
        """``max_attempts`` raised so that a manual retry gets at least one more run."""
        return self.greatest(J.c.max_attempts, J.c.attempt + 1)

    def ensure_schema(self, conn: Connection, rls_role: str, app_user: str | None) -> None:
        raise NotImplementedError

    def notify(self, conn: Connection, queues: Iterable[str]) -> None:
        """Wake workers once the transaction commits."""
        raise NotImplementedError

    # -- enqueue -----------------------------------------------------------------
    def write_jobs(
        self, conn: Connection, rows: Sequence[dict[str, Any]], *, owner: bool = False
    ) -> Sequence[Inserted]:
        """Insert *rows* and wake the workers of their queues (once committed).

        ``owner``: *conn* is tenantry's own connection as the table's owner
        (not a tenant session), which allows a faster bulk path where the
        dialect has one.
        """
        inserted = self.insert_jobs(conn, rows)
        self.notify(conn, {r["queue"] for r in rows})
        return inserted

    @contextmanager
    def claim_connection(self, engine: Engine, *, alone: bool) -> Iterator[Connection]:
        """The connection a worker's claim, and the acknowledgements it carries, run on.

        Committed when the block ends. *alone*: the block runs nothing but a
        claim without acknowledgements (``claims_in_one_statement``), which a
        dialect may run as one autocommitted statement: as atomic and as
        durable, without the round trips of ``BEGIN`` and ``COMMIT``.
        """
        with engine.begin() as conn:
            yield conn

    def claims_in_one_statement(self, *, fair: bool) -> bool:
        """Whether ``claim`` is a single statement, atomic without a transaction."""
        return False

    def writes_in_one_statement(self, rows: Sequence[dict[str, Any]]) -> bool:
        """Whether ``write_jobs`` is a single statement, atomic without a transaction."""
        return False

    def write_standalone(
        self, engine: Engine, rows: Sequence[dict[str, Any]]
    ) -> Sequence[Inserted]:
        """Write *rows* in tenantry's own transaction, committed when this returns.

        For an enqueue without the caller's session or connection. A dialect
        may override this with a cheaper way to the same result (PostgreSQL
        runs one autocommitted statement on the driver's connection); errors
        must stay SQLAlchemy's, as this generic path raises them.
        """
        if self.writes_in_one_statement(rows):
            with engine.connect() as conn:
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
                return self.write_jobs(conn, rows)
        with engine.begin() as conn:
            return self.write_jobs(conn, rows, owner=True)

    async def awrite_standalone(
        self, engine: AsyncEngine, rows: Sequence[dict[str, Any]]
    ) -> Sequence[Inserted]:
        """``write_standalone`` on an async engine."""
        if self.writes_in_one_statement(rows):
            async with engine.connect() as aconn:
                aconn = await aconn.execution_options(isolation_level="AUTOCOMMIT")
                return await aconn.run_sync(lambda conn: self.write_jobs(conn, rows))
        async with engine.begin() as aconn:
            return await aconn.run_sync(lambda conn: self.write_jobs(conn, rows, owner=True))

    def insert_jobs(self, conn: Connection, rows: Sequence[dict[str, Any]]) -> list[Inserted]:
        """Insert *rows*; rows with an idempotency key may resolve to an existing job.

        Keyless rows go in as one multi-row INSERT. A keyed row uses
        ``ON CONFLICT DO NOTHING`` against the partial unique index, so two
        concurrent enqueues with the same key cannot both insert: the loser gets
        the winner's id (after the winner commits, on PostgreSQL).
        """
        plain = [r for r in rows if r.get("idempotency_key") is None]
        results: dict[int, Inserted] = {}
        if plain:
            ids = self.insert_many_ids(conn, plain)
            for index, job_id in zip(
                (i for i, r in enumerate(rows) if r.get("idempotency_key") is None),
                ids,
                strict=True,
            ):
                results[index] = Inserted(int(job_id), True)
        for index, row in enumerate(rows):
            if row.get("idempotency_key") is not None:
                results[index] = self._insert_keyed(conn, row)
        return [results[i] for i in range(len(rows))]

    def insert_many_ids(self, conn: Connection, rows: list[dict[str, Any]]) -> list[int]:
        """Multi-row INSERT; the new ids in the order of *rows*."""
        result = conn.execute(self.insert().returning(J.c.id, sort_by_parameter_order=True), rows)
        return [int(i) for i in result.scalars()]

    def _insert_keyed(self, conn: Connection, row: dict[str, Any]) -> Inserted:
        stmt = (
            self.insert()
            .values(**row)
            .on_conflict_do_nothing(  # type: ignore[attr-defined]
                index_elements=[J.c.tenant_id, J.c.idempotency_key],
                index_where=text(IDEMPOTENCY_PREDICATE),
            )
            .returning(J.c.id)
        )
        for _ in range(5):
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
        raise RuntimeError("idempotent enqueue did not settle after 5 tries")

    # -- claiming and outcomes ---------------------------------------------------
    def claim(
        self,
        conn: Connection,
        *,
        worker_id: str,
        queues: Sequence[str],
        limit: int,
        lease_seconds: float,
        tenants: Sequence[str] | None = None,
        fair: bool = True,
        held: Mapping[str, float] | None = None,
        check_limits: bool = True,
        after: str = "",
    ) -> list[Job]:
        """Move up to *limit* available jobs to ``running`` under a fresh lease token.

        ``fair=True`` shares the batch between tenants (``queue/fairness.py``)
        and honours paused tenants and per-tenant limits; ``fair=False`` is
        strict priority-then-FIFO across all tenants, kept as the baseline the
        fairness benchmark compares with.

        ``held``: each tenant's load in this worker (the fair order's
        "running"). ``check_limits=False`` skips taking the claim locks of
        limited tenants when the caller knows there are none; such tenants,
        should one exist after all, are then left out, never over-served.

        ``after``: where the fair claim's window of busy tenants starts (see
        ``FAIR_WINDOW``); the caller moves it on from claim to claim.
        """
        if not fair:
            return self.claim_fifo(
                conn,
                worker_id=worker_id,
                queues=queues,
                limit=limit,
                lease_seconds=lease_seconds,
                tenants=tenants,
            )
        return self.claim_fair(
            conn,
            worker_id=worker_id,
            queues=queues,
            limit=limit,
            lease_seconds=lease_seconds,
            tenants=tenants,
            held=held,
            check_limits=check_limits,
            after=after,
        )

    def claim_fifo(
        self,
        conn: Connection,
        *,
        worker_id: str,
        queues: Sequence[str],
        limit: int,
        lease_seconds: float,
        tenants: Sequence[str] | None,
    ) -> list[Job]:
        """Strict ``priority DESC, scheduled_at, id`` over all tenants."""
        candidates = (
            select(J.c.id)
            .where(J.c.state == JobState.AVAILABLE.value, J.c.queue.in_(list(queues)))
            .order_by(J.c.priority.desc(), J.c.scheduled_at, J.c.id)
            .limit(limit)
        )
        if tenants is not None:
            candidates = candidates.where(J.c.tenant_id.in_(list(tenants)))
        candidates = self.lock_for_claim(candidates)
        chosen = candidates.cte("chosen")
        return self.mark_claimed(
            conn, J.c.id.in_(select(chosen.c.id)), worker_id=worker_id, lease_seconds=lease_seconds
        )

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
        raise NotImplementedError

    def mark_claimed(
        self,
        conn: Connection,
        where: ColumnElement[bool],
        *,
        worker_id: str,
        lease_seconds: float,
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
                lease_expires_at=self.now_plus(lease_seconds),
                lease_token=str(uuid.uuid4()),
                worker_id=worker_id,
            )
            .returning(*J.c)
        )
        return interleave([Job.from_row(r) for r in conn.execute(stmt)])

    def lock_for_claim(self, query: Any) -> Any:
        return query

    def complete(self, conn: Connection, leases: Sequence[Lease]) -> set[int]:
        """Mark jobs completed; returns the ids whose lease was still theirs."""
        return self._fenced_update(
            conn,
            leases,
            state=JobState.COMPLETED.value,
            finished_at=self.now(),
            lease_expires_at=None,
            lease_token=None,
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

    def fail(
        self,
        conn: Connection,
        job: Job,
        error: dict[str, Any],
        *,
        retry_at: datetime | None,
        dead: bool = False,
    ) -> bool:
        """Record a failed attempt, fenced on the lease; retry later or dead-letter."""
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

    def _fenced_one(self, conn: Connection, job: Job, **values: Any) -> bool:
        """UPDATE one job only if it is still running under this attempt's lease."""
        result = conn.execute(
            update(J)
            .where(
                J.c.id == job.id,
                J.c.lease_token == job.lease_token,
                J.c.state == JobState.RUNNING.value,
            )
            .values(**values)
        )
        return result.rowcount == 1

    def extend_leases(
        self, conn: Connection, leases: Sequence[Lease], lease_seconds: float
    ) -> set[int]:
        return self._fenced_update(conn, leases, lease_expires_at=self.now_plus(lease_seconds))

    def release(self, conn: Connection, leases: Sequence[Lease]) -> set[int]:
        """Hand running jobs back (graceful shutdown): available again, attempt not spent."""
        return self._fenced_update(
            conn,
            leases,
            state=JobState.AVAILABLE.value,
            attempt=J.c.attempt - 1,
            lease_expires_at=None,
            lease_token=None,
            worker_id=None,
        )

    def rescue_expired(self, conn: Connection, limit: int = 500) -> list[tuple[int, JobState]]:
        """Return jobs whose lease expired (their worker died) to the queue, or to dead."""
        expired = self.lock_for_claim(
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
                update(J)
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

    def postpone(self, conn: Connection, job: Job, until: datetime) -> bool:
        """Put a claimed job back to wait until *until*, without spending its attempt.

        Used when the job's tenant cannot be served right now (suspended): the
        job waits instead of failing.
        """
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

    def cancel_tenant_jobs(self, conn: Connection, tenant_id: str) -> int:
        """Cancel every unfinished job of a tenant (it is being deleted).

        A running job's outcome is then void: its completion is fenced on
        ``state = 'running'``, and the worker's heartbeat tells the handler.
        """
        result = conn.execute(
            update(J)
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

    def stage_due(self, conn: Connection, limit: int = 5000) -> int:
        """Make scheduled and retryable jobs whose time has come available."""
        due = self.lock_for_claim(
            select(J.c.id)
            .where(
                J.c.state.in_([JobState.SCHEDULED.value, JobState.RETRYABLE.value]),
                J.c.scheduled_at <= self.now(),
            )
            .limit(limit)
        ).cte("due")
        result = conn.execute(
            update(J).where(J.c.id.in_(select(due.c.id))).values(state=JobState.AVAILABLE.value)
        )
        return int(result.rowcount or 0)

    # -- operations ---------------------------------------------------------------
    def prune_finished(self, conn: Connection, older_than: timedelta, limit: int) -> int:
        cutoff = utcnow() - older_than
        batch = (
            select(J.c.id)
            .where(J.c.finished_at.is_not(None), J.c.finished_at < cutoff)
            .limit(limit)
            .scalar_subquery()
        )
        return int(conn.execute(delete(J).where(J.c.id.in_(batch))).rowcount or 0)
