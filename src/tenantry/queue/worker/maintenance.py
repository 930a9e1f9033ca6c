"""Maintenance: stage due jobs and rescue expired leases, in every source.

Each task is a small service; the loop visits a source once per tick and
runs the services that are due there in one transaction, so adding a
service does not add a transaction per source.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

from sqlalchemy import Connection

from tenantry.errors import DB_ERRORS
from tenantry.queue.sources import JobSource
from tenantry.queue.worker.observe import ErrorLog
from tenantry.queue.worker.state import Runtime
from tenantry.tenancy.logs import get_logger

log = get_logger(__name__)


class MaintenanceService(Protocol):
    """One maintenance task, run inside the visit's transaction."""

    name: str

    def due(self, key: str, now: float) -> bool:
        """Whether to run on the source *key* in this visit."""

    def work(self, conn: Connection, source: JobSource) -> int:
        """Do it; returns how many jobs became available (wake the claim loop if any)."""

    def done(self, source: JobSource, now: float, count: int) -> None:
        """The visit's transaction committed; *count* is what ``work`` returned."""


class StageDue:
    """Make scheduled and retryable jobs whose time has come available."""

    name = "stage due jobs"

    def due(self, key: str, now: float) -> bool:
        return True

    def work(self, conn: Connection, source: JobSource) -> int:
        return source.driver.stage_due(conn)

    def done(self, source: JobSource, now: float, count: int) -> None:
        return None


class RescueExpired:
    """Hand back the jobs of workers that died: their leases expired."""

    name = "rescue expired leases"

    def __init__(self, rt: Runtime) -> None:
        self._rt = rt
        self._interval = rt.options.rescue_interval
        self._last: dict[str, float] = {}

    def due(self, key: str, now: float) -> bool:
        return now - self._last.setdefault(key, now) >= self._interval

    def work(self, conn: Connection, source: JobSource) -> int:
        return len(source.driver.rescue_expired(conn))

    def done(self, source: JobSource, now: float, count: int) -> None:
        self._last[source.key] = now
        if count:
            self._rt.report.stats.rescued += count
            log.warning("rescued %d job(s) with expired leases on %s", count, source.key)
        self._rt.report.signals.rescued.bump(count)


class Maintenance:
    """Visits every source each tick and runs the services due there.

    Store databases are visited every tick. A tenant database where a
    visit found nothing to do is visited again after a growing interval
    (up to ``idle_poll_max``), so a worker serving hundreds of tenant
    databases does not open a transaction in each of them twice a second.
    """

    def __init__(self, rt: Runtime, services: list[MaintenanceService]) -> None:
        self._rt = rt
        self._services = services
        self._idle: dict[str, tuple[float, float]] = {}
        self._errors = ErrorLog(log)
        self.tick = min(rt.options.poll_interval, 0.5)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            await self.visit_all(time.monotonic())
            self._rt.report.signals.maintenance_passes.bump()

    async def visit_all(self, now: float) -> None:
        state = self._rt.state
        idle = self._idle
        for source in list(state.sources):
            key = source.key
            if not state.source_backoff.ready(key) or idle.get(key, (0.0, 0.0))[0] > now:
                continue
            due = [s for s in self._services if s.due(key, now)]
            try:
                async with source.async_engine().begin() as conn:
                    counts = [await conn.run_sync(s.work, source) for s in due]
            except DB_ERRORS as exc:
                self._errors.failed("maintenance", key, exc)
                continue
            for service, count in zip(due, counts, strict=True):
                service.done(source, now, count)
            found = any(counts)
            if source.tenant_id is not None:
                if found:
                    idle.pop(key, None)
                else:
                    interval = min(
                        self._rt.options.idle_poll_max, idle.get(key, (0.0, self.tick / 2))[1] * 2
                    )
                    idle[key] = (now + interval, interval)
            if found:
                state.wake_source(key)
