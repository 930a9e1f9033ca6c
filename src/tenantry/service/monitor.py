"""Periodic samples of the queue for the dashboard's live overview and chart.

The jobs tables are the only place that sees every worker, so the samples
come from :meth:`QueueAdmin.stats`, not from the embedded worker's counters. Each
sample counts the jobs that finished since the previous one (``finished_at``
in that interval), so the throughput chart shows every worker's completions
exactly once, however the sampling drifts. Samples are kept in memory only:
the chart starts empty after a restart.

Besides the recent samples, a day of history is kept rolled up into buckets
of :data:`HISTORY_BUCKET` seconds (8,640 small records), so the chart can show
the last hours without keeping every sample or querying the jobs tables for
them.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta

from tenantry.queue import QueueAdmin, QueueStats
from tenantry.queue.job import utcnow
from tenantry.tenancy.logs import get_logger

log = get_logger(__name__)

#: How long a cancelled refresh waits for its query before giving up on it.
SETTLE_TIMEOUT = 30.0

#: Seconds of samples rolled up into one entry of :attr:`Monitor.history`, and
#: how far back that history goes.
HISTORY_BUCKET = 10.0
HISTORY_SECONDS = 86400.0


@dataclass(frozen=True)
class Sample:
    """What happened in one interval ending at ``at``, and the depth at its end."""

    at: datetime
    seconds: float
    completed: int
    dead: int
    failed: int
    depth: int
    running: int

    @property
    def throughput(self) -> float:
        """Completed jobs per second in this interval."""
        return self.completed / self.seconds if self.seconds > 0 else 0.0

    def then(self, later: Sample) -> Sample:
        """This interval and the *later* one that follows it, as one sample."""
        return Sample(
            at=later.at,
            seconds=self.seconds + later.seconds,
            completed=self.completed + later.completed,
            dead=self.dead + later.dead,
            failed=self.failed + later.failed,
            depth=later.depth,
            running=later.running,
        )


class Monitor:
    """Keeps the latest :class:`QueueStats` and a bounded series of :class:`Sample`."""

    def __init__(self, admin: QueueAdmin, *, interval: float, keep: int, window: float) -> None:
        self.admin = admin
        self.interval = interval
        self.window = window
        self.samples: deque[Sample] = deque(maxlen=keep)
        self.bucket = max(HISTORY_BUCKET, interval)
        self.history: deque[Sample] = deque(maxlen=math.ceil(HISTORY_SECONDS / self.bucket) + 1)
        self.latest: QueueStats | None = None
        self.seq = 0  # bumps with every refresh; the dashboard shows it to prove liveness
        self.last_error: str | None = None
        self._lock = asyncio.Lock()

    async def run(self) -> None:
        """Refresh every ``interval`` seconds until cancelled; a failed refresh is retried."""
        while True:
            with contextlib.suppress(Exception):
                await self.refresh()
            await asyncio.sleep(self.interval)

    async def current(self) -> QueueStats:
        """The latest stats if fresh (younger than two intervals), else a new reading."""
        latest = self.latest
        if latest is not None and (utcnow() - latest.at).total_seconds() < 2 * self.interval:
            return latest
        return await self.refresh()

    async def refresh(self) -> QueueStats:
        async with self._lock:
            try:
                stats, sample = await self._take_settled()
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                log.warning("queue statistics could not be read: %s", self.last_error)
                raise
            self.last_error = None
            self.latest = stats
            self.samples.append(sample)
            self._roll_up(sample)
            self.seq += 1
            return stats

    def _roll_up(self, sample: Sample) -> None:
        """Add *sample* to :attr:`history`, merged into the last entry if in the same bucket."""
        last = self.history[-1] if self.history else None
        if last is not None and (
            last.at.timestamp() // self.bucket == sample.at.timestamp() // self.bucket
        ):
            self.history[-1] = last.then(sample)
        else:
            self.history.append(sample)

    async def _take_settled(self) -> tuple[QueueStats, Sample]:
        """``_take`` on a thread that a cancelled refresh still waits for.

        Cancelling the await does not stop the thread, which holds a pooled
        connection until its query returns. The service closes the pools right
        after it cancels the monitor; a connection returned to a closed pool
        would never be closed.
        """
        work = asyncio.ensure_future(asyncio.to_thread(self._take))
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            await asyncio.wait({work}, timeout=SETTLE_TIMEOUT)
            if work.done() and not work.cancelled():
                work.exception()  # seen: the refresh was cancelled, not failed
            raise

    def _take(self) -> tuple[QueueStats, Sample]:
        previous = self.samples[-1].at if self.samples else None
        stats = self.admin.stats(window=timedelta(seconds=self.window))
        since = previous or stats.at - timedelta(seconds=self.interval)
        span = max(utcnow() - since, timedelta(milliseconds=1))
        recent = self.admin.stats(window=span).total()
        total = stats.total()
        sample = Sample(
            at=stats.at,
            seconds=span.total_seconds(),
            completed=recent.completed,
            dead=recent.dead,
            failed=recent.failed_attempts,
            depth=sum(total.depth.values()),
            running=total.running,
        )
        return stats, sample
