"""The queue's client: enqueue jobs for the current tenant, sync or async.

Enqueueing writes the job row through the caller's session or connection when
one is given, so the job exists if and only if the caller's transaction
commits (the outbox pattern without a relay). Without one, tenantry writes
the job in its own transaction (on PostgreSQL one autocommitted statement),
and only reports it once committed.

Operations on jobs that already exist (list, retry, cancel, purge, stats...)
are :class:`~tenantry.queue.admin.QueueAdmin`'s, reached as ``queue.admin``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypedDict, Unpack

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import Session

from tenantry.errors import (
    ConfigError,
    CrossTenantAccessError,
    InvariantError,
    QueueUnavailableError,
)
from tenantry.queue.admin import QueueAdmin
from tenantry.queue.drivers import (
    Created,
    Inserted,
    NewJobs,
    driver_for,
    ensure_queue_schema,
    ensure_store_queue,
)
from tenantry.queue.enqueued import EnqueuedJob, EnqueuedJobs
from tenantry.queue.job import JobState, utcnow
from tenantry.queue.registry import NUL_REFUSED, JobRegistry
from tenantry.queue.sources import JobSource, source_of
from tenantry.tenancy.catalog import IsolationMode, Tenant
from tenantry.tenancy.context import current_tenant
from tenantry.tenancy.ids import validate_tenant_id
from tenantry.tenancy.isolation import strategy_for
from tenantry.tenancy.session import TenantSession

if TYPE_CHECKING:
    from tenantry.tenancy.facade import Tenancy


# A dict lookup per row, not the enum's constructor (measured: see docs/performance.md).
_STATES = {s.value: s for s in JobState}


@contextmanager
def _reported_unavailable() -> Iterator[None]:
    """A database that is away becomes a clear error that says nothing was enqueued.

    Only a successful COMMIT makes enqueue return; any failure before or during
    it surfaces here, so a job is never reported that was not committed.
    """
    try:
        yield
    except DBAPIError as exc:
        if isinstance(exc, OperationalError) or exc.connection_invalidated:
            raise QueueUnavailableError(
                "the queue's database is unreachable; the job was not enqueued "
                f"({type(exc.orig).__name__}; if the connection broke during COMMIT the "
                "outcome is unknown: retry with an idempotency key to be safe)"
            ) from exc
        raise


class EnqueueKwargs(TypedDict, total=False):
    """The enqueue methods' scheduling options, declared once for all four.

    ``Unpack``-ed as keyword arguments, so a call site is type-checked name
    by name, and a misspelt option is a ``TypeError``.
    """

    delay: float | timedelta | None
    run_at: datetime | None
    priority: int | None
    queue: str | None
    max_attempts: int | None
    idempotency_key: str | None
    correlation_id: str | None


@dataclass(frozen=True, slots=True)
class EnqueueOptions:
    """How the jobs of one enqueue call are scheduled and identified.

    The public methods' keyword arguments (``EnqueueKwargs``), carried inward
    as one value, so the sync and async paths validate them in one place.
    """

    delay: float | timedelta | None = None
    run_at: datetime | None = None
    priority: int | None = None
    queue: str | None = None
    max_attempts: int | None = None
    idempotency_key: str | None = None
    correlation_id: str | None = None


class Queue:
    """Enqueue jobs for the current tenant; ``admin`` operates on jobs of any tenant."""

    def __init__(self, tenantry: Tenancy, registry: JobRegistry) -> None:
        self.tenantry = tenantry
        self.registry = registry

    @cached_property
    def admin(self) -> QueueAdmin:
        """The operations API over the same tenantry (list, retry, cancel, purge, stats...)."""
        return QueueAdmin(self.tenantry)

    # -- set-up -------------------------------------------------------------------
    def setup(self) -> None:
        """Ensure the jobs table exists in every database that holds tenants."""
        self.tenantry.setup()
        for store in self.tenantry.stores.values():
            ensure_store_queue(store)
        # Tenants with a database of their own keep their jobs there.
        for mode in IsolationMode:
            if not strategy_for(mode).own_database:
                continue
            for tenant in self.tenantry.list_tenants(isolation=mode):
                source = source_of(tenant, self.tenantry.store(tenant.store))
                with source.engine().begin() as conn:
                    ensure_queue_schema(conn, source.store)

    # -- enqueue --------------------------------------------------------------------
    def enqueue(
        self,
        kind: str,
        payload: Any,
        *,
        session: Session | None = None,
        connection: Connection | None = None,
        **options: Unpack[EnqueueKwargs],
    ) -> EnqueuedJob:
        """Enqueue one job for the current tenant (in *session*'s transaction if given)."""
        return self._enqueue(kind, [payload], session, connection, EnqueueOptions(**options))[0]

    def enqueue_many(
        self,
        kind: str,
        payloads: Sequence[Any],
        *,
        session: Session | None = None,
        connection: Connection | None = None,
        **options: Unpack[EnqueueKwargs],
    ) -> Sequence[EnqueuedJob]:
        """Enqueue many jobs of one kind with a single multi-row INSERT."""
        return self._enqueue(kind, payloads, session, connection, EnqueueOptions(**options))

    async def aenqueue(
        self,
        kind: str,
        payload: Any,
        *,
        session: AsyncSession | None = None,
        connection: AsyncConnection | None = None,
        **options: Unpack[EnqueueKwargs],
    ) -> EnqueuedJob:
        """``enqueue`` for async code: in an ``AsyncSession``'s transaction if given."""
        jobs = await self._aenqueue(kind, [payload], session, connection, EnqueueOptions(**options))
        return jobs[0]

    async def aenqueue_many(
        self,
        kind: str,
        payloads: Sequence[Any],
        *,
        session: AsyncSession | None = None,
        connection: AsyncConnection | None = None,
        **options: Unpack[EnqueueKwargs],
    ) -> Sequence[EnqueuedJob]:
        """``enqueue_many`` for async code."""
        return await self._aenqueue(kind, payloads, session, connection, EnqueueOptions(**options))

    # The twins below differ only in how they reach the database; what to write
    # (``_prepare``) and what to report (``_enqueued``) is shared.
    def _enqueue(
        self,
        kind: str,
        payloads: Sequence[Any],
        session: Session | None,
        connection: Connection | None,
        options: EnqueueOptions,
    ) -> Sequence[EnqueuedJob]:
        tenant_id, rows = self._prepare(kind, payloads, options, session)
        if not rows:
            return []
        if session is not None:
            return self._write(session.connection(), rows)
        if connection is not None:
            return self._write(connection, rows)
        with _reported_unavailable():
            source = self._source_of(self.tenantry.catalog.get(tenant_id))
            inserted = source.driver.write_standalone(source.enqueue_engine(), rows)
        return self._enqueued(rows, inserted)

    async def _aenqueue(
        self,
        kind: str,
        payloads: Sequence[Any],
        session: AsyncSession | None,
        connection: AsyncConnection | None,
        options: EnqueueOptions,
    ) -> Sequence[EnqueuedJob]:
        tenant_id, rows = self._prepare(kind, payloads, options, session)
        if not rows:
            return []
        if session is not None:
            conn = await session.connection()
            return await conn.run_sync(self._write, rows)
        if connection is not None:
            return await connection.run_sync(self._write, rows)
        with _reported_unavailable():
            tenant = self.tenantry.catalog.get_cached(tenant_id)
            if tenant is None:
                tenant = await asyncio.to_thread(self.tenantry.catalog.get, tenant_id)
            source = self._source_of(tenant)
            inserted = await source.driver.awrite_standalone(source.async_engine(), rows)
        return self._enqueued(rows, inserted)

    def _prepare(
        self,
        kind: str,
        payloads: Sequence[Any],
        options: EnqueueOptions,
        session: Session | AsyncSession | None,
    ) -> tuple[str, NewJobs]:
        """The tenant in context and its validated rows; nothing is written yet."""
        tenant_id = current_tenant()
        if options.idempotency_key is not None and len(payloads) > 1:
            raise ConfigError("an idempotency key applies to one job; enqueue them one by one")
        rows = self._rows(tenant_id, kind, payloads, options)
        if rows and session is not None:
            self._check_session_tenant(session, tenant_id)
        return tenant_id, rows

    def _rows(
        self, tenant_id: str, kind: str, payloads: Sequence[Any], options: EnqueueOptions
    ) -> NewJobs:
        handler = self.registry.get(kind)
        delay, run_at = options.delay, options.run_at
        priority, queue = options.priority, options.queue
        max_attempts = options.max_attempts
        idempotency_key, correlation_id = options.idempotency_key, options.correlation_id
        if delay is not None and run_at is not None:
            raise ConfigError("give delay or run_at, not both")
        now = utcnow()
        when = now
        if run_at is not None:
            if run_at.tzinfo is None:
                raise ConfigError("run_at must be timezone-aware")
            when = run_at.astimezone(UTC)  # SQLite keeps no offset: store UTC everywhere
        elif delay is not None:
            when = now + (delay if isinstance(delay, timedelta) else timedelta(seconds=delay))
        attempts = max_attempts if max_attempts is not None else handler.retry.max_attempts
        if attempts < 1:
            raise ConfigError("max_attempts must be at least 1")
        if idempotency_key is not None and (not idempotency_key or len(idempotency_key) > 200):
            raise ConfigError("idempotency_key must be 1-200 characters")
        # The columns' sizes: PostgreSQL would refuse longer values mid-transaction
        # (and SQLite would keep them), so they are refused before anything is written.
        if queue is not None and not 1 <= len(queue) <= 100:
            raise ConfigError("queue must be 1-100 characters")
        if correlation_id is not None and len(correlation_id) > 200:
            raise ConfigError("correlation_id must be at most 200 characters")
        for name, value in (
            ("queue", queue),
            ("idempotency_key", idempotency_key),
            ("correlation_id", correlation_id),
        ):
            if value is not None and "\x00" in value:
                raise ConfigError(f"{name}: {NUL_REFUSED}")
        prio = handler.priority if priority is None else priority
        if not -32768 <= prio <= 32767:
            raise ConfigError("priority must be between -32768 and 32767")
        state = JobState.SCHEDULED if when > now else JobState.AVAILABLE
        validate = handler.validate
        values = [validate(p) for p in payloads]  # every payload, before anything is written
        common: dict[str, Any] = {
            "tenant_id": tenant_id,
            "queue": queue or handler.queue,
            "kind": kind,
            "payload": None,  # per job: see NewJobs
            "priority": prio,
            "state": state.value,
            "attempt": 0,
            "max_attempts": attempts,
            "scheduled_at": when,
            "errors": [],
            "idempotency_key": idempotency_key,
            "correlation_id": correlation_id,
            "created_at": now,
        }
        return NewJobs(common, values, handler)

    def _write(self, conn: Connection, rows: NewJobs) -> Sequence[EnqueuedJob]:
        """Write through the caller's connection, in the caller's transaction."""
        driver = driver_for(conn.dialect.name)
        return self._enqueued(rows, driver.write_jobs(conn, rows))

    @staticmethod
    def _enqueued(rows: NewJobs, inserted: Sequence[Inserted]) -> Sequence[EnqueuedJob]:
        if isinstance(inserted, Created) or all(i.created for i in inserted):
            # The common case: every job as requested, so from the shared columns.
            ids = inserted.ids if isinstance(inserted, Created) else [i.id for i in inserted]
            if len(ids) != len(rows):
                raise InvariantError(f"{len(rows)} jobs written but {len(ids)} ids returned")
            common = rows.common
            return EnqueuedJobs(
                ids, common["tenant_id"], common["kind"], common["queue"], _STATES[common["state"]]
            )
        # A deduplicated enqueue reports the existing job as it is, not the request.
        states = _STATES
        return [
            EnqueuedJob(
                i.id,
                r["tenant_id"],
                (i.existing or r)["kind"],
                (i.existing or r)["queue"],
                states[(i.existing or r)["state"]],
                i.created,
            )
            for i, r in zip(inserted, rows, strict=True)
        ]

    @staticmethod
    def _check_session_tenant(session: Session | AsyncSession, tenant_id: str) -> None:
        sync = session.sync_session if isinstance(session, AsyncSession) else session
        if isinstance(sync, TenantSession) and sync.tenant_id != tenant_id:
            raise CrossTenantAccessError(
                f"session of tenant {sync.tenant_id!r} used to enqueue for tenant {tenant_id!r}"
            )

    def warm(self, tenant_ids: Iterable[str]) -> None:
        """Cache these tenants and open a connection in each of their enqueue pools.

        For a service's start-up: otherwise the first enqueue for a tenant
        pays a catalog query and a new database connection, which a user
        sees as one slow request. A tenant that
        ``enqueue`` would refuse (unknown, suspended, moving) raises the same
        error here.
        """
        with _reported_unavailable():
            for source in self._warm_sources(tenant_ids):
                with source.enqueue_engine().connect():
                    pass

    async def awarm(self, tenant_ids: Iterable[str]) -> None:
        """``warm`` for ``aenqueue``: the async enqueue pools."""
        with _reported_unavailable():
            sources = await asyncio.to_thread(self._warm_sources, tenant_ids)
            for source in sources:
                async with source.async_engine().connect():
                    pass

    def _warm_sources(self, tenant_ids: Iterable[str]) -> list[JobSource]:
        """One source per jobs table of these tenants, with the catalog warmed."""
        ids = [validate_tenant_id(t) for t in tenant_ids]
        self.tenantry.catalog.warm(ids)
        sources = (self._source_of(self.tenantry.catalog.get(t)) for t in ids)
        return list({s.key: s for s in sources}.values())

    def _source_of(self, tenant: Tenant) -> JobSource:
        """Where a standalone enqueue writes: the tenant's jobs table, as the queue's login.

        Not through a tenant session: the row is tenantry's own, stamped with the
        tenant in context (validated), so row-level security has nothing to
        guard here, and skipping the session's set-up leaves an enqueue
        outside a transaction one round trip (see ``writes_in_one_statement``).
        The tenant must still be servable: suspended, migrating or moving
        tenants get the same errors a session would raise.
        """
        placement = self.tenantry.placement(tenant=tenant)
        return source_of(placement.tenant, placement.store)
