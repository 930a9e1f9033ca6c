"""Queue statistics per tenant, read from the jobs tables themselves.

The database is the only place that sees every worker, so these figures come
from it, not from one worker's counters. Each query goes through an index
(pending states by ``(tenant_id, state, kind)``, recent outcomes by
``finished_at``), so asking costs the same with a billion finished jobs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, func, select

from tenantry.queue.job import PENDING_STATES, JobState, as_utc, utcnow
from tenantry.queue.schema import jobs_table as J


@dataclass
class TenantQueueStats:
    """One tenant's queue, now and over the last ``window``."""

    tenant_id: str
    #: Unfinished jobs by state (``scheduled``, ``available``, ``running``, ``retryable``).
    depth: dict[str, int] = field(default_factory=dict)
    #: Unfinished jobs by (state, kind).
    by_kind: dict[tuple[str, str], int] = field(default_factory=dict)
    #: Seconds the oldest runnable job has been waiting (None: nothing runnable).
    oldest_runnable_age: float | None = None
    #: Outcomes within the window.
    completed: int = 0
    dead: int = 0
    cancelled: int = 0
    #: Jobs whose latest attempt (started within the window) failed and will be retried.
    failed_attempts: int = 0
    window_seconds: float = 300.0

    @property
    def running(self) -> int:
        return self.depth.get(JobState.RUNNING.value, 0)

    @property
    def runnable(self) -> int:
        return self.depth.get(JobState.AVAILABLE.value, 0)

    @property
    def throughput(self) -> float:
        """Completed jobs per second over the window."""
        return self.completed / self.window_seconds if self.window_seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "tenant_id": self.tenant_id,
            "depth": dict(self.depth),
            "by_kind": [
                {"state": state, "kind": kind, "count": n}
                for (state, kind), n in sorted(self.by_kind.items())
            ],
            "running": self.running,
            "oldest_runnable_age": self.oldest_runnable_age,
            "completed": self.completed,
            "dead": self.dead,
            "cancelled": self.cancelled,
            "failed_attempts": self.failed_attempts,
            "throughput": self.throughput,
            "window_seconds": self.window_seconds,
        }


@dataclass
class QueueStats:
    """Per-tenant statistics across every job source, with totals."""

    at: datetime
    window_seconds: float
    tenants: dict[str, TenantQueueStats]

    def total(self) -> TenantQueueStats:
        """Everything summed (``oldest_runnable_age`` is the maximum)."""
        out = TenantQueueStats("*", window_seconds=self.window_seconds)
        for t in self.tenants.values():
            for state, n in t.depth.items():
                out.depth[state] = out.depth.get(state, 0) + n
            for key, n in t.by_kind.items():
                out.by_kind[key] = out.by_kind.get(key, 0) + n
            if t.oldest_runnable_age is not None:
                out.oldest_runnable_age = max(out.oldest_runnable_age or 0.0, t.oldest_runnable_age)
            out.completed += t.completed
            out.dead += t.dead
            out.cancelled += t.cancelled
            out.failed_attempts += t.failed_attempts
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "window_seconds": self.window_seconds,
            "total": self.total().to_dict(),
            "tenants": [self.tenants[k].to_dict() for k in sorted(self.tenants)],
        }


def collect(
    conn: Connection,
    into: dict[str, TenantQueueStats],
    *,
    window: timedelta,
    tenant_ids: Sequence[str] | None = None,
    now: datetime | None = None,
) -> None:
    """Add one jobs table's figures to *into* (several sources add up)."""
    now = now or utcnow()
    cutoff = now - window
    seconds = window.total_seconds()

    def for_tenant(tenant_id: str) -> TenantQueueStats:
        stats = into.get(tenant_id)
        if stats is None:
            stats = into[tenant_id] = TenantQueueStats(tenant_id, window_seconds=seconds)
        return stats

    def scoped(query: Any) -> Any:
        return query.where(J.c.tenant_id.in_(list(tenant_ids))) if tenant_ids else query

    pending = scoped(
        select(J.c.tenant_id, J.c.state, J.c.kind, func.count())
        .where(J.c.state.in_([s.value for s in PENDING_STATES]))
        .group_by(J.c.tenant_id, J.c.state, J.c.kind)
    )
    for tenant_id, state, kind, n in conn.execute(pending):
        stats = for_tenant(tenant_id)
        stats.depth[state] = stats.depth.get(state, 0) + int(n)
        stats.by_kind[(state, kind)] = stats.by_kind.get((state, kind), 0) + int(n)

    oldest = scoped(
        select(J.c.tenant_id, func.min(J.c.scheduled_at))
        .where(J.c.state == JobState.AVAILABLE.value)
        .group_by(J.c.tenant_id)
    )
    for tenant_id, scheduled_at in conn.execute(oldest):
        when = as_utc(scheduled_at)
        if when is not None:
            for_tenant(tenant_id).oldest_runnable_age = max(0.0, (now - when).total_seconds())

    finished = scoped(
        select(J.c.tenant_id, J.c.state, func.count())
        .where(J.c.finished_at.is_not(None), J.c.finished_at >= cutoff)
        .group_by(J.c.tenant_id, J.c.state)
    )
    for tenant_id, state, n in conn.execute(finished):
        stats = for_tenant(tenant_id)
        if state == JobState.COMPLETED.value:
            stats.completed += int(n)
        elif state == JobState.DEAD.value:
            stats.dead += int(n)
        elif state == JobState.CANCELLED.value:
            stats.cancelled += int(n)

    failing = scoped(
        select(J.c.tenant_id, func.count())
        .where(J.c.state == JobState.RETRYABLE.value, J.c.attempted_at >= cutoff)
        .group_by(J.c.tenant_id)
    )
    for tenant_id, n in conn.execute(failing):
        for_tenant(tenant_id).failed_attempts += int(n)
