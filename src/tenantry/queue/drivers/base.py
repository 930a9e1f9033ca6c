"""What the queue asks of a database: the ``QueueDriver`` protocol and its value objects.

A driver runs the queue's SQL for one dialect. Its methods take a *sync*
``Connection``; async callers run them through ``AsyncConnection.run_sync``,
so each statement has one implementation, not a sync and an async twin.
Callers (client, worker, operations) type against the protocol and never
against a driver class, so a driver's fast paths stay behind this boundary.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ClassVar, Protocol, overload

from sqlalchemy import ColumnElement, Connection, Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from tenantry.queue.enqueued import ByIds
from tenantry.queue.job import Job, JobState
from tenantry.queue.registry import Handler

Lease = tuple[int, str]  # (job id, lease token)


@dataclass(frozen=True, slots=True)
class ClaimRequest:
    """One claim: which jobs a worker wants, and how they are shared out.

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

    worker_id: str
    queues: Sequence[str]
    limit: int
    lease_seconds: float
    tenants: Sequence[str] | None = None
    fair: bool = True
    held: Mapping[str, float] | None = None
    check_limits: bool = True
    after: str = ""


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
    made once on first use; PostgreSQL's paths read ``common`` and
    ``payload_texts()`` instead and never make them, which is most of what a
    large ``enqueue_many`` would cost in Python.
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


def queues_of(rows: Sequence[Mapping[str, Any]]) -> set[str]:
    return {rows.queue} if isinstance(rows, NewJobs) else {r["queue"] for r in rows}


class QueueDriver(Protocol):
    """The queue's SQL for one database dialect."""

    dialect: ClassVar[str]
    #: Execution options for queue write transactions (SQLite: BEGIN IMMEDIATE).
    write_options: ClassVar[Mapping[str, Any]]

    def ensure_schema(self, conn: Connection, grantee: str) -> None:
        """Create the jobs table (and on PostgreSQL its grants and RLS) on *conn*'s database."""
        ...

    # -- enqueue ------------------------------------------------------------------
    def write_jobs(
        self, conn: Connection, rows: Sequence[dict[str, Any]], *, owner: bool = False
    ) -> Sequence[Inserted]:
        """Insert *rows* and wake the workers of their queues (once committed).

        ``owner``: *conn* is tenantry's own connection as the table's owner
        (not a tenant session), which allows a faster bulk path where the
        dialect has one. Rows with an idempotency key may resolve to an
        existing unfinished job (``Inserted.created`` False).
        """
        ...

    def write_standalone(
        self, engine: Engine, rows: Sequence[dict[str, Any]]
    ) -> Sequence[Inserted]:
        """Write *rows* in tenantry's own transaction, committed when this returns.

        Errors are SQLAlchemy's, whichever path the driver takes.
        """
        ...

    async def awrite_standalone(
        self, engine: AsyncEngine, rows: Sequence[dict[str, Any]]
    ) -> Sequence[Inserted]:
        """``write_standalone`` on an async engine."""
        ...

    # -- claiming -----------------------------------------------------------------
    def claims_in_one_statement(self, *, fair: bool) -> bool:
        """Whether ``claim`` is a single statement, atomic without a transaction."""
        ...

    def claim_connection(
        self, engine: Engine, *, alone: bool
    ) -> AbstractContextManager[Connection]:
        """The connection a worker's claim, and the acknowledgements it carries, run on.

        Committed when the block ends. *alone*: the block runs nothing but a
        claim without acknowledgements (``claims_in_one_statement``), which a
        driver may run as one autocommitted statement: as atomic and as
        durable, without the round trips of ``BEGIN`` and ``COMMIT``.
        """
        ...

    def claim(self, conn: Connection, request: ClaimRequest) -> list[Job]:
        """Move up to ``request.limit`` available jobs to ``running`` under a fresh lease."""
        ...

    # -- outcomes, fenced on the lease -------------------------------------------------
    def complete(self, conn: Connection, leases: Sequence[Lease]) -> set[int]:
        """Mark jobs completed; returns the ids whose lease was still theirs."""
        ...

    def extend(self, conn: Connection, leases: Sequence[Lease], lease_seconds: float) -> set[int]:
        """Push the leases' expiry on; returns the ids whose lease was still theirs."""
        ...

    def release(self, conn: Connection, leases: Sequence[Lease]) -> set[int]:
        """Hand running jobs back (graceful shutdown): available again, attempt not spent."""
        ...

    def fail(
        self,
        conn: Connection,
        job: Job,
        error: dict[str, Any],
        *,
        retry_at: datetime | None,
        dead: bool = False,
    ) -> bool:
        """Record a failed attempt; retry at *retry_at*, or dead-letter."""
        ...

    def postpone(self, conn: Connection, job: Job, until: datetime) -> bool:
        """Put a claimed job back to wait until *until*, without spending its attempt."""
        ...

    # -- maintenance and operations ---------------------------------------------------
    def stage_due(self, conn: Connection, limit: int = 5000) -> int:
        """Make scheduled and retryable jobs whose time has come available."""
        ...

    def rescue_expired(self, conn: Connection, limit: int = 500) -> list[tuple[int, JobState]]:
        """Return jobs whose lease expired (their worker died) to the queue, or to dead."""
        ...

    def cancel_tenant_jobs(self, conn: Connection, tenant_id: str) -> int:
        """Cancel every unfinished job of a tenant (it is being deleted)."""
        ...

    def delete_tenant_jobs(self, conn: Connection, tenant_id: str) -> int: ...

    def prune_finished(self, conn: Connection, older_than: timedelta, limit: int) -> int: ...

    def now(self) -> ColumnElement[datetime]:
        """The time leases and schedules are measured against, as SQL."""
        ...

    def one_more_attempt(self) -> ColumnElement[int]:
        """``max_attempts`` raised so that a manual retry gets at least one more run."""
        ...
