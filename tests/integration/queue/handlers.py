"""Payload types, handler-call recorders and small registries for the queue suite.

Handlers themselves are mostly defined inside the tests (they close over a
:class:`Recorder`); what several tests share lives here.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

from pydantic import BaseModel

from tenantry import current_tenant_or_none
from tenantry.queue import Job, JobContext, JobRegistry

JobKey = tuple[str, int]  # (tenant id, job id): ids repeat across tenant databases


class Item(BaseModel):
    """The payload most test handlers take."""

    n: int = 0
    key: str = ""
    sleep: float = 0.0


class Recorder:
    """Thread-safe record of handler calls (sync handlers run in worker threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: Counter[JobKey] = Counter()
        self.tenants: dict[JobKey, list[str | None]] = {}
        self.snapshots: list[Job] = []
        self.times: dict[JobKey, list[float]] = {}
        self.finished: Counter[JobKey] = Counter()

    def hit(self, ctx: JobContext) -> int:
        """Count one call of *ctx*'s job; returns how many calls it has had so far."""
        key = (ctx.job.tenant_id, ctx.job.id)
        with self._lock:
            self.calls[key] += 1
            self.tenants.setdefault(key, []).append(current_tenant_or_none())
            self.snapshots.append(ctx.job)
            self.times.setdefault(key, []).append(time.time())
            return self.calls[key]

    def done(self, ctx: JobContext) -> None:
        with self._lock:
            self.finished[(ctx.job.tenant_id, ctx.job.id)] += 1

    def total(self) -> int:
        with self._lock:
            return sum(self.calls.values())

    def count(self, tenant_id: str, job_id: int) -> int:
        with self._lock:
            return self.calls[(tenant_id, job_id)]

    def first_time(self, tenant_id: str, job_id: int) -> float | None:
        with self._lock:
            times = self.times.get((tenant_id, job_id))
            return times[0] if times else None


def noop_registry() -> JobRegistry:
    """Kinds ``record`` and ``other`` (both no-ops) on the default queue."""
    registry = JobRegistry()

    @registry.handler("record")
    def record(ctx: JobContext, payload: Item) -> None:
        return None

    @registry.handler("other")
    async def other(ctx: JobContext, payload: Item) -> None:
        return None

    return registry


def recording_registry(recorder: Recorder) -> JobRegistry:
    """Kind ``work`` (async) and ``work_sync`` that record every call."""
    registry = JobRegistry()

    @registry.handler("work")
    async def work(ctx: JobContext, payload: Item) -> None:
        recorder.hit(ctx)

    @registry.handler("work_sync")
    def work_sync(ctx: JobContext, payload: Item) -> None:
        recorder.hit(ctx)

    return registry
