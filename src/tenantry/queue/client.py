"""The queue's client side: enqueue (sync and async) and the operations API.

Enqueueing writes the job row through the caller's session or connection when
one is given, so the job exists if and only if the caller's transaction
commits (the outbox pattern without a relay). Without one, tenantry writes
the job in its own transaction (on PostgreSQL one autocommitted statement),
and only reports it once committed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, func, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import Session

from tenantry.errors import (
    ConfigError,
    CrossTenantAccessError,
    JobNotFoundError,
    JobStateError,
    QueueUnavailableError,
)
from tenantry.queue import control
from tenantry.queue.backends import Inserted, backend_for, ensure_queue_schema, ensure_store_queue
from tenantry.queue.backends.base import Created, NewJobs
from tenantry.queue.enqueued import EnqueuedJob, EnqueuedJobs
from tenantry.queue.job import FINISHED_STATES, PENDING_STATES, Job, JobState, utcnow
from tenantry.queue.registry import NUL_REFUSED, JobRegistry
from tenantry.queue.schema import jobs_table as J
from tenantry.queue.sources import JobSource, source_of
from tenantry.queue.stats import QueueStats, TenantQueueStats
from tenantry.queue.stats import collect as collect_stats
from tenantry.tenancy.catalog import IsolationMode, Tenant
from tenantry.tenancy.context import current_tenant
from tenantry.tenancy.ids import validate_tenant_id
from tenantry.tenancy.logs import get_logger
from tenantry.tenancy.session import TenantSession

if TYPE_CHECKING:
    from tenantry.tenancy.facade import Tenancy

log = get_logger(__name__)


_STATES = {s.value: s for s in JobState}  # JobState(value) costs microseconds per row


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


class Queue:
    """Enqueue jobs for the current tenant and operate on jobs of any tenant."""

    def __init__(self, tenantry: Tenancy, registry: JobRegistry) -> None:
        self.tenantry = tenantry
        self.registry = registry
        self._unknown_stores: set[str] = set()

    # -- set-up -------------------------------------------------------------------
    def setup(self) -> None:
        """Ensure the jobs table exists in every database that holds tenants."""
        self.tenantry.setup()
        for store in self.tenantry.stores.values():
            ensure_store_queue(store)
        for tenant in self.tenantry.list_tenants(isolation=IsolationMode.DATABASE):
            source = JobSource(self.tenantry.store(tenant.store), tenant.id)
            with source.engine().begin() as conn:
                ensure_queue_schema(conn, source.store)

    # -- enqueue --------------------------------------------------------------------
    def _rows(
        self,
        tenant_id: str,
        kind: str,
        payloads: Sequence[Any],
        *,
        delay: float | timedelta | None,
        run_at: datetime | None,
        priority: int | None,
        queue: str | None,
        max_attempts: int | None,
        idempotency_key: str | None,
        correlation_id: str | None,
    ) -> NewJobs:
        handler = self.registry.get(kind)
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
        backend = backend_for(conn.dialect.name)
        return self._enqueued(rows, backend.write_jobs(conn, rows))

    @staticmethod
    def _enqueued(rows: NewJobs, inserted: Sequence[Inserted]) -> Sequence[EnqueuedJob]:
        if isinstance(inserted, Created) or all(i.created for i in inserted):
            # The common case: every job as requested, so from the shared columns.
            ids = inserted.ids if isinstance(inserted, Created) else [i.id for i in inserted]
            if len(ids) != len(rows):
                raise RuntimeError(f"{len(rows)} jobs written but {len(ids)} ids returned")
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

    def enqueue(
        self,
        kind: str,
        payload: Any,
        *,
        session: Session | None = None,
        connection: Connection | None = None,
        delay: float | timedelta | None = None,
        run_at: datetime | None = None,
        priority: int | None = None,
        queue: str | None = None,
        max_attempts: int | None = None,
        idempotency_key: str | None = None,
        correlation_id: str | None = None,
    ) -> EnqueuedJob:
        """Enqueue one job for the current tenant (in *session*'s transaction if given)."""
        return self.enqueue_many(
            kind,
            [payload],
            session=session,
            connection=connection,
            delay=delay,
            run_at=run_at,
            priority=priority,
            queue=queue,
            max_attempts=max_attempts,
            idempotency_key=idempotency_key,
            correlation_id=correlation_id,
        )[0]

    def enqueue_many(
        self,
        kind: str,
        payloads: Sequence[Any],
        *,
        session: Session | None = None,
        connection: Connection | None = None,
        **options: Any,
    ) -> Sequence[EnqueuedJob]:
        """Enqueue many jobs of one kind with a single multi-row INSERT."""
        tenant_id, rows = self._prepare(kind, payloads, options)
        if not rows:
            return []
        if session is not None:
            self._check_session_tenant(session, tenant_id)
            return self._write(session.connection(), rows)
        if connection is not None:
            return self._write(connection, rows)
        with _reported_unavailable():
            source = self._source_of(self.tenantry.catalog.get(tenant_id))
            inserted = source.backend.write_standalone(source.enqueue_engine(), rows)
        return self._enqueued(rows, inserted)

    def _prepare(
        self, kind: str, payloads: Sequence[Any], options: dict[str, Any]
    ) -> tuple[str, NewJobs]:
        tenant_id = current_tenant()
        opts = _enqueue_options(options)
        if opts["idempotency_key"] is not None and len(payloads) > 1:
            raise ConfigError("an idempotency key applies to one job; enqueue them one by one")
        return tenant_id, self._rows(tenant_id, kind, payloads, **opts)

    async def aenqueue(
        self,
        kind: str,
        payload: Any,
        *,
        session: AsyncSession | None = None,
        connection: AsyncConnection | None = None,
        **options: Any,
    ) -> EnqueuedJob:
        return (
            await self.aenqueue_many(
                kind, [payload], session=session, connection=connection, **options
            )
        )[0]

    async def aenqueue_many(
        self,
        kind: str,
        payloads: Sequence[Any],
        *,
        session: AsyncSession | None = None,
        connection: AsyncConnection | None = None,
        **options: Any,
    ) -> Sequence[EnqueuedJob]:
        tenant_id, rows = self._prepare(kind, payloads, options)
        if not rows:
            return []
        if session is not None:
            self._check_session_tenant(session, tenant_id)
            conn = await session.connection()
            return await conn.run_sync(self._write, rows)
        if connection is not None:
            return await connection.run_sync(self._write, rows)
        with _reported_unavailable():
            tenant = self.tenantry.catalog.get_cached(tenant_id)
            if tenant is None:
                tenant = await asyncio.to_thread(self.tenantry.catalog.get, tenant_id)
            source = self._source_of(tenant)
            inserted = await source.backend.awrite_standalone(source.async_engine(), rows)
        return self._enqueued(rows, inserted)

    def warm(self, tenant_ids: Iterable[str]) -> None:
        """Cache these tenants and open a connection in each of their enqueue pools.

        For a service's start-up: otherwise the first enqueue for a tenant
        pays a catalog query and a new database connection (tens of
        milliseconds), which a user sees as one slow request. A tenant that
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

    # -- operations ------------------------------------------------------------------
    def sources(
        self, *, stores: Sequence[str] | None = None, tenants: Sequence[str] | None = None
    ) -> list[JobSource]:
        """Every jobs table, optionally only those of some stores or tenants."""
        grouped = self.tenants_by_source(stores=stores, tenants=tenants)
        return [grouped[k][0] for k in sorted(grouped)]

    def tenants_by_source(
        self,
        *,
        stores: Sequence[str] | None = None,
        tenants: Sequence[str] | None = None,
        listed: Sequence[Tenant] | None = None,
    ) -> dict[str, tuple[JobSource, list[Tenant]]]:
        """Each jobs table with the catalog's tenants whose jobs it holds.

        *listed*: the catalog as the caller just listed it (a worker lists it
        with ``Catalog.list_since``); by default it is listed here.
        """
        found: dict[str, tuple[JobSource, list[Tenant]]] = {}
        catalog = self.tenantry.list_tenants() if listed is None else listed
        wanted = set(tenants) if tenants is not None else None
        for tenant in catalog:
            if wanted is not None and tenant.id not in wanted:
                continue
            if stores is not None and tenant.store not in stores:
                continue
            if tenant.store not in self.tenantry.stores:
                # Placed on a store this process is not configured for: not ours to serve.
                if tenant.store not in self._unknown_stores:
                    self._unknown_stores.add(tenant.store)
                    log.warning(
                        "tenant %s is on store %r, which is not configured here; "
                        "its jobs are not served by this process",
                        tenant.id,
                        tenant.store,
                    )
                continue
            source = source_of(tenant, self.tenantry.store(tenant.store))
            found.setdefault(source.key, (source, []))[1].append(tenant)
        if wanted is None:
            for store in self.tenantry.stores.values():
                if stores is None or store.name in stores:
                    found.setdefault(store.name, (JobSource(store), []))
        return found

    def sync_controls(
        self,
        *,
        stores: Sequence[str] | None = None,
        tenants: Sequence[str] | None = None,
        prune: bool = True,
    ) -> int:
        """Make every queue control row match the catalog (``queue/control.py``).

        Tenant operations do this as they happen; this repairs rows a failed
        write left stale. Returns the rows written. ``prune`` drops rows of
        tenants the catalog no longer has (only when no tenant filter is given).
        """
        written = 0
        for source, members in self.tenants_by_source(stores=stores, tenants=tenants).values():
            with source.engine().begin() as conn:
                written += control.sync(conn, members)
                if prune and tenants is None:
                    written += control.prune_missing(conn, {t.id for t in members})
        return written

    def source_for(self, tenant_id: str) -> JobSource:
        tenant = self.tenantry.catalog.get(validate_tenant_id(tenant_id), cached=False)
        return source_of(tenant, self.tenantry.store(tenant.store))

    def get_job(self, tenant_id: str, job_id: int) -> Job:
        source = self.source_for(tenant_id)
        with source.engine(write=False).connect() as conn:
            row = conn.execute(
                select(J).where(J.c.id == job_id, J.c.tenant_id == tenant_id)
            ).first()
        if row is None:
            raise JobNotFoundError(f"no job {job_id} for tenant {tenant_id!r}")
        return Job.from_row(row)

    def list_jobs(
        self,
        *,
        tenant_id: str | None = None,
        state: JobState | str | None = None,
        kind: str | None = None,
        queue: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Job]:
        """Jobs newest first, filtered; across every source when no tenant is given."""
        query = select(J).order_by(J.c.created_at.desc(), J.c.id.desc()).limit(limit + offset)
        if tenant_id is not None:
            query = query.where(J.c.tenant_id == validate_tenant_id(tenant_id))
        if state is not None:
            query = query.where(J.c.state == JobState(state).value)
        if kind is not None:
            query = query.where(J.c.kind == kind)
        if queue is not None:
            query = query.where(J.c.queue == queue)
        sources = [self.source_for(tenant_id)] if tenant_id else self.sources()
        jobs: list[Job] = []
        for source in sources:
            with source.engine(write=False).connect() as conn:
                jobs.extend(Job.from_row(r) for r in conn.execute(query))
        jobs.sort(key=lambda j: (j.created_at, j.id), reverse=True)
        return jobs[offset : offset + limit]

    def count_jobs(self, *, tenant_id: str | None = None) -> dict[str, int]:
        """Jobs per state (for one tenant or all)."""
        query = select(J.c.state, func.count()).group_by(J.c.state)
        if tenant_id is not None:
            query = query.where(J.c.tenant_id == validate_tenant_id(tenant_id))
        sources = [self.source_for(tenant_id)] if tenant_id else self.sources()
        counts = {s.value: 0 for s in JobState}
        for source in sources:
            with source.engine(write=False).connect() as conn:
                for state, n in conn.execute(query):
                    counts[state] += int(n)
        return counts

    def stats(
        self, *, tenant_id: str | None = None, window: timedelta = timedelta(minutes=5)
    ) -> QueueStats:
        """Depth by tenant/state/kind, oldest runnable age and recent outcomes.

        Read from every jobs table (or the one tenant's), so it covers all
        workers; tenants of the catalog without jobs are listed with zeros.
        """
        if window.total_seconds() <= 0:
            raise ConfigError("window must be positive")
        into: dict[str, TenantQueueStats] = {}
        now = utcnow()
        if tenant_id is not None:
            validate_tenant_id(tenant_id)
            groups = [(self.source_for(tenant_id), [tenant_id])]
        else:
            groups = [
                (source, [t.id for t in members])
                for source, members in self.tenants_by_source().values()
            ]
        for source, members in groups:
            for member in members:
                into.setdefault(
                    member, TenantQueueStats(member, window_seconds=window.total_seconds())
                )
            with source.engine(write=False).connect() as conn:
                collect_stats(
                    conn,
                    into,
                    window=window,
                    tenant_ids=[tenant_id] if tenant_id else None,
                    now=now,
                )
        return QueueStats(at=now, window_seconds=window.total_seconds(), tenants=into)

    def _transition(
        self,
        tenant_id: str,
        job_id: int,
        allowed: Sequence[JobState],
        values: dict[str, Any],
    ) -> Job:
        source = self.source_for(tenant_id)
        query = (
            update(J)
            .where(
                J.c.id == job_id,
                J.c.tenant_id == tenant_id,
                J.c.state.in_([s.value for s in allowed]),
            )
            .values(**values)
            .returning(*J.c)
        )
        try:
            with source.engine().begin() as conn:
                row = conn.execute(query).first()
        except IntegrityError as exc:
            raise JobStateError(
                f"job {job_id} cannot be requeued: another unfinished job of tenant "
                f"{tenant_id!r} holds its idempotency key"
            ) from exc
        if row is None:
            job = self.get_job(tenant_id, job_id)  # raises JobNotFoundError
            raise JobStateError(
                f"job {job_id} is {job.state.value}; allowed from: "
                + ", ".join(s.value for s in allowed)
            )
        return Job.from_row(row)

    def _requeue_values(self, source: JobSource) -> dict[str, Any]:
        return {
            "state": JobState.AVAILABLE.value,
            "scheduled_at": utcnow(),
            "finished_at": None,
            "max_attempts": source.backend.one_more_attempt(),
        }

    def retry_job(self, tenant_id: str, job_id: int) -> Job:
        """Run a dead, cancelled or waiting job again now, with one more attempt allowed."""
        return self._transition(
            tenant_id,
            job_id,
            [JobState.DEAD, JobState.CANCELLED, JobState.RETRYABLE, JobState.SCHEDULED],
            self._requeue_values(self.source_for(tenant_id)),
        )

    def retry_dead(self, tenant_id: str) -> int:
        """Requeue every dead job of a tenant; returns how many.

        One statement normally. If some dead job's idempotency key is held by an
        unfinished job, they are requeued one by one and those are left dead.
        """
        source = self.source_for(tenant_id)
        dead = (J.c.tenant_id == tenant_id, J.c.state == JobState.DEAD.value)
        try:
            with source.engine().begin() as conn:
                result = conn.execute(update(J).where(*dead).values(**self._requeue_values(source)))
            return int(result.rowcount or 0)
        except IntegrityError:
            pass
        with source.engine(write=False).connect() as conn:
            ids = list(conn.execute(select(J.c.id).where(*dead)).scalars())
        requeued = 0
        for job_id in ids:
            try:
                self.retry_job(tenant_id, int(job_id))
                requeued += 1
            except JobStateError as exc:
                log.warning("job %s stays dead: %s", job_id, exc)
        return requeued

    def cancel_job(self, tenant_id: str, job_id: int) -> Job:
        """Cancel an unfinished job. A running one keeps running, but its outcome is void."""
        return self._transition(
            tenant_id,
            job_id,
            PENDING_STATES,
            {
                "state": JobState.CANCELLED.value,
                "finished_at": utcnow(),
                "lease_token": None,
                "lease_expires_at": None,
            },
        )

    def purge(
        self,
        *,
        tenant_id: str | None = None,
        states: Sequence[JobState] = FINISHED_STATES,
        older_than: timedelta | None = None,
    ) -> int:
        """Delete finished jobs now (all of them, or of one tenant, or older than a cutoff)."""
        bad = [s for s in states if JobState(s) not in FINISHED_STATES]
        if bad:
            raise JobStateError("only finished jobs can be purged")
        total = 0
        sources = [self.source_for(tenant_id)] if tenant_id else self.sources()
        for source in sources:
            query = J.delete().where(J.c.state.in_([JobState(s).value for s in states]))
            if tenant_id is not None:
                query = query.where(J.c.tenant_id == tenant_id)
            if older_than is not None:
                query = query.where(J.c.finished_at < utcnow() - older_than)
            with source.engine().begin() as conn:
                total += int(conn.execute(query).rowcount or 0)
        return total

    def prune(
        self, older_than: timedelta, *, batch_size: int = 1000, max_batches: int = 1000
    ) -> int:
        """Retention: delete jobs finished before the cutoff, in bounded batches.

        Each batch is its own short transaction, so pruning a large backlog never
        holds long locks or bloats one huge transaction.
        """
        total = 0
        for source in self.sources():
            for _ in range(max_batches):
                with source.engine().begin() as conn:
                    n = source.backend.prune_finished(conn, older_than, batch_size)
                total += n
                if n < batch_size:
                    break
        return total


_OPTION_NAMES = (
    "delay",
    "run_at",
    "priority",
    "queue",
    "max_attempts",
    "idempotency_key",
    "correlation_id",
)


def _enqueue_options(options: dict[str, Any]) -> dict[str, Any]:
    unknown = set(options) - set(_OPTION_NAMES)
    if unknown:
        raise ConfigError(f"unknown enqueue options: {', '.join(sorted(unknown))}")
    return {name: options.get(name) for name in _OPTION_NAMES}
