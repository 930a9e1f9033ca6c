"""Machinery of the tenant-aware queue tests: a handler timeline, control rows, checks.

* :class:`Timeline` records when every handler call started and ended, per
  tenant, and the most calls of one tenant that ran at the same time.
* :func:`timeline_registry` has the kinds those tests enqueue.
* Control rows (``tenantry_queue_tenants``) are read and broken with direct SQL
  on the tenant's job source, as an operator or a failed write would leave them.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import delete, func, insert, select, update

from tenantry.queue import JobContext, JobRegistry, JobState, Worker, WorkerStats
from tenantry.queue.job import as_utc, utcnow
from tenantry.queue.schema import control_table as C
from tenantry.queue.schema import jobs_table as J
from tenantry.queue.sources import JobSource
from tests.integration.queue.handlers import Item
from tests.integration.queue.support import Env

#: Where only the jobs table and its control rows matter: a shared table and a
#: tenant database on SQLite, a shared table on PostgreSQL. (Schema-mode tenants
#: keep their jobs in the store's table, as shared ones do; a PostgreSQL tenant
#: database costs seconds to create and drop.) Tests whose subject differs by
#: mode use ``support.CASES``.
JOB_TABLE_CASES = pytest.mark.parametrize(
    ("backend", "mode"),
    [("sqlite", "shared"), ("sqlite", "database"), ("postgresql", "shared")],
)


@dataclass
class Span:
    tenant_id: str
    job_id: int
    priority: int
    start: float
    end: float | None = None
    lease_lost: bool = False


class Timeline:
    """Thread-safe record of handler calls: who started when, and how many at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.spans: list[Span] = []
        self._active: Counter[str] = Counter()
        self.peak: Counter[str] = Counter()

    def begin(self, ctx: JobContext) -> Span:
        span = Span(ctx.job.tenant_id, ctx.job.id, ctx.job.priority, time.monotonic())
        with self._lock:
            self.spans.append(span)
            self._active[span.tenant_id] += 1
            self.peak[span.tenant_id] = max(self.peak[span.tenant_id], self._active[span.tenant_id])
        return span

    def finish(self, span: Span) -> None:
        with self._lock:
            span.end = time.monotonic()
            self._active[span.tenant_id] -= 1

    def snapshot(self) -> list[Span]:
        with self._lock:
            return list(self.spans)

    def started(self, tenant_id: str | None = None) -> int:
        with self._lock:
            return sum(1 for s in self.spans if tenant_id is None or s.tenant_id == tenant_id)

    def order(self) -> list[str]:
        """The tenant of each start, in start order."""
        return [s.tenant_id for s in self.snapshot()]

    def job_ids(self, tenant_id: str) -> list[int]:
        return [s.job_id for s in self.snapshot() if s.tenant_id == tenant_id]

    def calls(self) -> Counter[tuple[str, int]]:
        return Counter((s.tenant_id, s.job_id) for s in self.snapshot())


def timeline_registry(timeline: Timeline) -> JobRegistry:
    """``work``: sleeps ``payload.sleep`` on the loop; ``work_tx`` the same as a
    transactional handler. ``hold``: waits up to ``payload.sleep`` seconds for
    the worker to say its lease is lost."""
    registry = JobRegistry()

    @registry.handler("work")
    async def work(ctx: JobContext, payload: Item) -> None:
        span = timeline.begin(ctx)
        try:
            if payload.sleep > 0:
                await asyncio.sleep(payload.sleep)
        finally:
            timeline.finish(span)

    @registry.handler("work_tx", transactional=True)
    async def work_tx(ctx: JobContext, payload: Item) -> None:
        span = timeline.begin(ctx)
        try:
            if payload.sleep > 0:
                await asyncio.sleep(payload.sleep)
        finally:
            timeline.finish(span)

    @registry.handler("hold")
    async def hold(ctx: JobContext, payload: Item) -> None:
        span = timeline.begin(ctx)
        try:
            deadline = time.monotonic() + payload.sleep
            while not ctx.lease_lost and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            span.lease_lost = ctx.lease_lost
        finally:
            timeline.finish(span)

    return registry


# -- workers that may not stop ---------------------------------------------------------
@asynccontextmanager
async def bounded_run(
    *workers: Worker, stop_within: float = 15.0
) -> AsyncIterator[list[asyncio.Task[WorkerStats]]]:
    """Like ``support.running``, but a worker that does not stop in time fails the
    test instead of hanging it: its tasks are cancelled until they are gone."""
    tasks = [asyncio.create_task(w.run()) for w in workers]
    stuck: set[asyncio.Task[WorkerStats]] = set()
    try:
        await asyncio.wait_for(asyncio.gather(*(w.wait_started() for w in workers)), 20)
        yield tasks
    finally:
        for w in workers:
            w.stop()
        _, pending = await asyncio.wait(tasks, timeout=stop_within)
        stuck = set(pending)
        if stuck:
            await abandon(workers, tasks)
    if stuck:
        raise AssertionError(f"{len(stuck)} worker(s) did not stop within {stop_within:g}s")
    errors = [t.exception() for t in tasks if not t.cancelled() and t.exception() is not None]
    if errors:
        raise errors[0]  # type: ignore[misc]


async def abandon(workers: Sequence[Worker], tasks: Sequence[asyncio.Task[WorkerStats]]) -> None:
    """Cancel stuck workers' run tasks and their background loops, until all are done."""
    for _ in range(20):
        loops = [
            t for t in asyncio.all_tasks() if t.get_name().startswith("tenantry-") and not t.done()
        ]
        for w in workers:
            loops.extend(t for t in w.background_tasks() if not t.done())
        left = [t for t in [*tasks, *loops] if not t.done()]
        if not left:
            return
        for task in left:
            task.cancel()
        await asyncio.wait(left, timeout=0.5)
    for w in workers:
        w.threads.shutdown()


# -- checks ---------------------------------------------------------------------------
def max_overlap(intervals: Sequence[tuple[float, float]]) -> int:
    """The most intervals that share one instant (touching ends do not overlap)."""
    events = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    # At equal times, ends (-1) sort before starts (+1).
    most = current = 0
    for _, step in events:
        current += step
        most = max(most, current)
    return most


def rate_violations(
    starts: Sequence[float], rate: float, burst: float, slack: float = 0.0
) -> list[tuple[float, float, int]]:
    """Windows [t_i, t_j] with more starts than burst + rate * (t_j - t_i + slack)."""
    times = sorted(starts)
    bad = []
    for i, begin in enumerate(times):
        for j in range(i, len(times)):
            count = j - i + 1
            if count > burst + rate * (times[j] - begin + slack) + 1e-6:
                bad.append((begin, times[j], count))
    return bad


# -- jobs and control rows by direct SQL ----------------------------------------------------
def control_row(env: Env, tenant_id: str) -> dict[str, Any] | None:
    source = env.source(tenant_id)
    with source.engine(write=False).connect() as conn:
        row = conn.execute(select(C).where(C.c.tenant_id == tenant_id)).mappings().first()
    return dict(row) if row is not None else None


def control_ids(source: JobSource) -> set[str]:
    with source.engine(write=False).connect() as conn:
        return set(conn.execute(select(C.c.tenant_id)).scalars())


def set_control(env: Env, tenant_id: str, **values: Any) -> None:
    with env.source(tenant_id).engine().begin() as conn:
        result = conn.execute(update(C).where(C.c.tenant_id == tenant_id).values(**values))
        assert result.rowcount == 1


def delete_control(env: Env, tenant_id: str) -> None:
    with env.source(tenant_id).engine().begin() as conn:
        result = conn.execute(delete(C).where(C.c.tenant_id == tenant_id))
        assert result.rowcount == 1


def insert_control(source: JobSource, tenant_id: str, **values: Any) -> None:
    with source.engine().begin() as conn:
        conn.execute(insert(C).values(tenant_id=tenant_id, updated_at=utcnow(), **values))


def wanted_control(weight: int = 1, **values: Any) -> dict[str, Any]:
    """The compared columns of a control row, with the defaults filled in."""
    row: dict[str, Any] = {
        "weight": weight,
        "max_running": None,
        "rate": None,
        "burst": None,
        "paused": False,
    }
    row.update(values)
    return row


def compared(row: dict[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {k: (bool(row[k]) if k == "paused" else row[k]) for k in wanted_control()}


@dataclass(frozen=True)
class TenantState:
    """What the claim sees of one tenant: its jobs by state and its oldest runnable job."""

    available: int
    running: int
    head: datetime | None


def tenant_state(env: Env, tenant_id: str) -> TenantState:
    source = env.source(tenant_id)
    mine = J.c.tenant_id == tenant_id
    with source.engine(write=False).connect() as conn:
        counts: dict[str, int] = {
            str(state): int(n)
            for state, n in conn.execute(
                select(J.c.state, func.count()).where(mine).group_by(J.c.state)
            )
        }
        head = conn.scalar(
            select(func.min(J.c.scheduled_at)).where(mine, J.c.state == JobState.AVAILABLE.value)
        )
    return TenantState(
        int(counts.get(JobState.AVAILABLE.value, 0)),
        int(counts.get(JobState.RUNNING.value, 0)),
        as_utc(head) if isinstance(head, datetime) else None,
    )


def attempted_times(env: Env, tenant_id: str) -> list[datetime]:
    """When each of the tenant's jobs was claimed (its last attempt), oldest first."""
    source = env.source(tenant_id)
    with source.engine(write=False).connect() as conn:
        found = conn.execute(
            select(J.c.attempted_at).where(
                J.c.tenant_id == tenant_id, J.c.attempted_at.is_not(None)
            )
        ).scalars()
        return sorted(t for t in (as_utc(v) for v in found) if t is not None)
