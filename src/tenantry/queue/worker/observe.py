"""What a worker tells the outside: counters, an observer for metrics, test signals.

Tests wait on :class:`Signal` counters ("three more claim rounds", "a refresh
happened") instead of sleeping and hoping that enough happened meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy.exc import DBAPIError

from tenantry.queue.job import Job
from tenantry.tenancy.logs import get_logger

log = get_logger(__name__)

#: Outcomes an attempt can end with (``WorkerObserver.outcome``).
COMPLETED = "completed"
RETRIED = "retried"
DEAD = "dead"
LOST = "lost"


@dataclass
class WorkerStats:
    claimed: int = 0
    completed: int = 0
    retried: int = 0
    dead: int = 0
    lost: int = 0
    released: int = 0
    rescued: int = 0
    postponed: int = 0  # claimed, then put back: the catalog said its tenant is not active


@dataclass
class TenantCounters:
    started: int = 0
    completed: int = 0
    failed: int = 0  # attempts that failed and will be retried
    dead: int = 0


class WorkerObserver(Protocol):
    """Receives what the worker measures, e.g. for Prometheus (``tenantry serve``).

    The worker keeps only counters of its own; durations and latencies would
    otherwise be lost. Methods are called on the worker's event loop, so they
    must be quick and must not block. An exception they raise is logged and
    ignored: metrics must never stop jobs.
    """

    def claimed(self, jobs: Sequence[Job], seconds: float) -> None:
        """A claim transaction returned *jobs* after *seconds* (also when it found none)."""

    def handler_finished(self, job: Job, seconds: float, error: BaseException | None) -> None:
        """The handler of *job* returned (``error`` is None) or raised after *seconds*."""

    def outcome(self, job: Job, outcome: str) -> None:
        """An attempt ended ``completed``, ``retried``, ``dead`` or ``lost``."""


class Signal:
    """A counter that coroutines can wait on until it reaches a value.

    Bumping it costs an increment while nobody waits, so the worker's hot
    paths can bump freely.
    """

    def __init__(self) -> None:
        self.count = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    def bump(self, n: int = 1) -> None:
        self.count += n
        if self._waiters:
            self._release()

    def _release(self) -> None:
        keep: list[tuple[int, asyncio.Future[None]]] = []
        for target, future in self._waiters:
            if future.done():
                continue
            if self.count >= target:
                future.set_result(None)
            else:
                keep.append((target, future))
        self._waiters = keep

    async def reach(self, target: int, timeout: float | None = None) -> None:
        """Wait until the count is at least *target* (``TimeoutError`` after *timeout*)."""
        if self.count >= target:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((target, future))
        try:
            await asyncio.wait_for(future, timeout)
        finally:
            future.cancel()

    async def more(self, n: int = 1, timeout: float | None = None) -> None:
        """Wait for *n* more bumps than have happened so far."""
        await self.reach(self.count + n, timeout)


class WorkerSignals:
    """The events tests wait for, each a :class:`Signal`."""

    def __init__(self) -> None:
        #: Claim rounds that asked at least one source for jobs.
        self.claim_rounds = Signal()
        #: Jobs whose acknowledgement was written (completed or found lost).
        self.acknowledged = Signal()
        #: Jobs rescued from an expired lease by this worker's maintenance.
        self.rescued = Signal()
        #: Maintenance passes over the sources (stage due jobs, rescue).
        self.maintenance_passes = Signal()
        #: Refreshes of the sources from the catalog that completed.
        self.refreshes = Signal()
        #: Listings of every tenant's status into the catalog's cache.
        self.status_listings = Signal()


class Report:
    """Where every outcome is counted: the worker's stats, per-tenant counters,
    the observer and the test signals, kept consistent in one place."""

    def __init__(self, observer: WorkerObserver | None) -> None:
        self.observer = observer
        self.stats = WorkerStats()
        #: Per-tenant counters of this worker (the database-wide view is QueueAdmin.stats()).
        self.tenant_stats: dict[str, TenantCounters] = {}
        self.signals = WorkerSignals()

    def counters(self, tenant_id: str) -> TenantCounters:
        counters = self.tenant_stats.get(tenant_id)
        if counters is None:
            counters = self.tenant_stats[tenant_id] = TenantCounters()
        return counters

    def observe(self, event: str, *args: Any) -> None:
        if self.observer is None:
            return
        try:
            getattr(self.observer, event)(*args)
        except Exception:  # a metrics bug must not stop jobs
            log.exception("worker observer failed on %s", event)

    def outcome(self, job: Job, outcome: str) -> None:
        """Count how an attempt ended, everywhere it is counted."""
        stats = self.stats
        if outcome == COMPLETED:
            stats.completed += 1
            self.counters(job.tenant_id).completed += 1
        elif outcome == LOST:
            stats.lost += 1
        elif outcome == DEAD:
            stats.dead += 1
            self.counters(job.tenant_id).dead += 1
        else:
            stats.retried += 1
            self.counters(job.tenant_id).failed += 1
        self.observe("outcome", job, outcome)


class ErrorLog:
    """Logs database errors that the worker rides out, at most once per operation
    and source per *interval*: a store that is away must not flood the log, and
    must not be silent either."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 60.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self._interval = interval
        self._clock = clock
        self._last: dict[tuple[str, str], float] = {}
        self._skipped: dict[tuple[str, str], int] = {}

    def failed(self, operation: str, where: str, exc: BaseException) -> None:
        key = (operation, where)
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._skipped[key] = self._skipped.get(key, 0) + 1
            return
        self._last[key] = now
        skipped = self._skipped.pop(key, 0)
        more = f" ({skipped} more since last logged)" if skipped else ""
        self._log.warning("%s on %s failed: %s%s", operation, where, short_error(exc), more)


def short_error(exc: BaseException) -> str:
    """One line of a database error, for logs (the driver's message, not SQLAlchemy's)."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        exc = exc.orig
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]
