"""Shared machinery: environments, bounded waits, in-process workers, direct SQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import func, select, update

from tenantry import Tenantry, tenant_context
from tenantry.queue import (
    EnqueuedJob,
    Job,
    JobRegistry,
    JobState,
    Queue,
    Worker,
    WorkerObserver,
    WorkerOptions,
    WorkerStats,
)
from tenantry.queue.drivers import ClaimRequest
from tenantry.queue.schema import jobs_table as J
from tenantry.queue.sources import JobSource
from tests.conftest import ALL_CASES, TenantryFactory
from tests.models import Note

#: Every (backend, isolation mode) pair: sqlite shared/database, postgresql shared/schema/database.
CASES = pytest.mark.parametrize(("backend", "mode"), ALL_CASES)
TENANTS = ("acme", "globex")


@dataclass
class Env:
    """One Tenantry with tenants of one isolation mode, and a Queue on *registry*."""

    t: Tenantry
    queue: Queue
    registry: JobRegistry
    tenants: tuple[str, ...]

    # -- enqueue ------------------------------------------------------------------
    def enqueue(self, tenant_id: str, kind: str, payload: Any, **options: Any) -> EnqueuedJob:
        with tenant_context(tenant_id):
            return self.queue.enqueue(kind, payload, **options)

    def enqueue_many(
        self, tenant_id: str, kind: str, payloads: Sequence[Any], **options: Any
    ) -> Sequence[EnqueuedJob]:
        with tenant_context(tenant_id):
            return self.queue.enqueue_many(kind, payloads, **options)

    # -- reading --------------------------------------------------------------------
    def job(self, tenant_id: str, job_id: int) -> Job:
        return self.queue.admin.get_job(tenant_id, job_id)

    async def ajob(self, tenant_id: str, job_id: int) -> Job:
        return await asyncio.to_thread(self.queue.admin.get_job, tenant_id, job_id)

    def counts(self, tenant_id: str) -> dict[str, int]:
        return self.queue.admin.count_jobs(tenant_id=tenant_id)

    def total(self, tenant_id: str) -> int:
        return sum(self.counts(tenant_id).values())

    def state(self, tenant_id: str, job_id: int) -> JobState:
        return self.job(tenant_id, job_id).state

    def raw_count(self, tenant_id: str) -> int:
        """The tenant's job rows, read on a plain (deferred-BEGIN) connection of its source."""
        source = self.source(tenant_id)
        store = source.store
        engine = (
            store.admin_engine()
            if source.tenant_id is None
            else store.tenant_engine(source.tenant_id, admin=True)
        )
        with engine.connect() as conn:
            query = select(func.count()).select_from(J).where(J.c.tenant_id == tenant_id)
            return int(conn.scalar(query) or 0)

    def notes(self, tenant_id: str) -> list[str]:
        with tenant_context(tenant_id), self.t.session() as s:
            return sorted(s.scalars(select(Note.body)))

    # -- workers --------------------------------------------------------------------
    def worker(
        self,
        registry: JobRegistry | None = None,
        *,
        observer: WorkerObserver | None = None,
        **options: Any,
    ) -> Worker:
        return quick_worker(self.t, registry or self.registry, observer=observer, **options)

    # -- direct SQL, as the worker would issue it -------------------------------------
    def source(self, tenant_id: str) -> JobSource:
        return self.queue.admin.source_for(tenant_id)

    def finish_directly(self, tenant_id: str, limit: int) -> list[int]:
        """Claim and complete up to *limit* available jobs of a tenant (oldest first)."""
        source = self.source(tenant_id)
        with source.engine().begin() as conn:
            jobs = source.driver.claim(
                conn,
                ClaimRequest(
                    worker_id="test-direct",
                    queues=["default"],
                    limit=limit,
                    lease_seconds=30,
                    tenants=[tenant_id],
                ),
            )
            done = source.driver.complete(conn, [(j.id, j.lease_token or "") for j in jobs])
        assert done == {j.id for j in jobs}
        return sorted(done)

    def set_columns(self, tenant_id: str, job_id: int, **values: Any) -> None:
        source = self.source(tenant_id)
        with source.engine().begin() as conn:
            result = conn.execute(
                update(J).where(J.c.id == job_id, J.c.tenant_id == tenant_id).values(**values)
            )
            assert result.rowcount == 1


def build_env(
    make_tenantry: TenantryFactory,
    backend: str,
    mode: str,
    registry: JobRegistry,
    tenants: Sequence[str] = TENANTS,
) -> Env:
    t = make_tenantry(backend)
    for tid in tenants:
        t.create_tenant(tid, isolation=mode)
    queue = Queue(t, registry)
    queue.setup()
    return Env(t, queue, registry, tuple(tenants))


EnvFactory = Callable[..., Env]


async def wait_until(
    pred: Callable[[], bool], timeout: float = 20.0, *, what: str = "condition"
) -> float:
    """Poll *pred* (in a thread: it may query the database) until true; returns seconds waited.

    Raises AssertionError when *timeout* passes first.
    """
    start = time.monotonic()
    while True:
        if await asyncio.to_thread(pred):
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.05)


@asynccontextmanager
async def running(*workers: Worker) -> AsyncIterator[list[asyncio.Task[WorkerStats]]]:
    """Run workers as tasks in this loop; stop them and wait for run() on exit."""
    tasks = [asyncio.create_task(w.run()) for w in workers]
    try:
        await asyncio.wait_for(asyncio.gather(*(w.wait_started() for w in workers)), 20)
        yield tasks
    finally:
        for w in workers:
            w.stop()
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]


def seconds_between(later: datetime | None, earlier: datetime | None) -> float:
    assert later is not None
    assert earlier is not None
    return (later - earlier).total_seconds()


def quick_worker(
    t: Tenantry,
    registry: JobRegistry,
    *,
    observer: WorkerObserver | None = None,
    **options: Any,
) -> Worker:
    """A worker with the suite's short intervals (polling, rescue, lease, grace)."""
    settings: dict[str, Any] = {
        "concurrency": 4,
        "poll_interval": 0.05,
        "rescue_interval": 0.2,
        "lease_seconds": 5.0,
        "shutdown_grace": 5.0,
    }
    settings.update(options)
    return Worker(t, registry, WorkerOptions(**settings), observer=observer)
