"""The queue's operations API: the one service layer the CLI, the HTTP API and the dashboard share.

Find, list, count, retry, cancel and delete jobs of any tenant, read the
queue's statistics, and repair the control rows. Each operation reaches the
jobs table where the tenant's jobs live (its store's, or its own database's)
as the store's owner login, so it works across tenants; enqueueing is
:class:`~tenantry.queue.client.Queue`'s job, and the worker's.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from tenantry.errors import ConfigError, JobNotFoundError, JobStateError
from tenantry.queue import control
from tenantry.queue.job import FINISHED_STATES, PENDING_STATES, Job, JobState, utcnow
from tenantry.queue.schema import jobs_table as J
from tenantry.queue.sources import JobSource, source_of
from tenantry.queue.stats import QueueStats, TenantQueueStats
from tenantry.queue.stats import collect as collect_stats
from tenantry.tenancy.catalog import Tenant
from tenantry.tenancy.ids import validate_tenant_id
from tenantry.tenancy.logs import get_logger

if TYPE_CHECKING:
    from tenantry.tenancy.facade import Tenancy

log = get_logger(__name__)


class QueueAdmin:
    """Operate on the jobs of any tenant: what an operator, not an application, does."""

    def __init__(self, tenantry: Tenancy) -> None:
        self.tenantry = tenantry
        self._unknown_stores: set[str] = set()

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
        """The one tenant's jobs table, placed as the catalog says now (not cached)."""
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
            "max_attempts": source.driver.one_more_attempt(),
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
                    n = source.driver.prune_finished(conn, older_than, batch_size)
                total += n
                if n < batch_size:
                    break
        return total
