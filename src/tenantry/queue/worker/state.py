"""What the worker's parts share while it runs: the jobs held, the buffer, the flags.

One object, passed to each part, instead of each part reaching into the
others: the claim loop fills it, the executor drains it, the completer and
the heartbeat read it. Everything here runs on the worker's event loop.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tenantry.backoff import ExponentialBackoff
from tenantry.queue.context import JobContext
from tenantry.queue.job import Job
from tenantry.queue.registry import JobRegistry
from tenantry.queue.sources import JobSource
from tenantry.queue.worker.buffer import AdaptivePrefetch, FixedPrefetch, JobBuffer
from tenantry.queue.worker.observe import Report
from tenantry.queue.worker.options import WorkerOptions
from tenantry.queue.worker.threads import WorkerThreads

if TYPE_CHECKING:
    from tenantry.tenancy.facade import Tenancy

#: Reconnect delays of a source whose claims fail: from this...
SOURCE_BACKOFF_BASE = 0.2
#: ...doubling up to this.
SOURCE_BACKOFF_CAP = 30.0


@dataclass
class Held:
    """A job this worker holds the lease of, from its claim to its outcome."""

    source: JobSource
    job: Job
    task: asyncio.Task[None] | None = None
    done: bool = False
    ctx: JobContext | None = None


class WorkerState:
    """The mutable state of one worker run, shared by its parts."""

    def __init__(self, options: WorkerOptions) -> None:
        concurrency = options.concurrency
        self.held: dict[tuple[str, int], Held] = {}
        self.buffer: JobBuffer[Held] = JobBuffer(fair=options.fair)
        #: ``None``: adaptive (see ``AdaptivePrefetch``), between ``concurrency``
        #: and ``max_prefetch`` jobs held beyond the running ones.
        self.max_prefetch = (
            max(concurrency, min(20 * concurrency, 1000))
            if options.max_prefetch is None
            else options.max_prefetch
        )
        self.prefetch: AdaptivePrefetch | FixedPrefetch = (
            AdaptivePrefetch(concurrency, self.max_prefetch)
            if options.prefetch is None
            else FixedPrefetch(options.prefetch)
        )
        self.running = 0
        self.active: dict[str, int] = {}  # running jobs per tenant in this worker
        self.to_complete: dict[str, list[Held]] = {}  # source key -> finished, not acknowledged
        self.claiming = False  # a claim transaction is under way
        self.stopping = False
        self.hard_stop = False
        self.sources: list[JobSource] = []
        # Adaptive polling of databases without LISTEN: key -> (next poll, interval).
        self.idle: dict[str, tuple[float, float]] = {}
        self.source_backoff = ExponentialBackoff(SOURCE_BACKOFF_BASE, SOURCE_BACKOFF_CAP)
        self.wake = asyncio.Event()  # the claim loop should look again
        self.ack = asyncio.Event()  # acknowledgements are waiting
        self.hard = asyncio.Event()  # stop(hard=True) came during the drain
        self.flush_lock = asyncio.Lock()

    def forget(self, held: Held) -> None:
        self.held.pop((held.source.key, held.job.id), None)

    def holds(self, held: Held) -> bool:
        return (held.source.key, held.job.id) in self.held

    def wake_source(self, key: str | None) -> None:
        if key is not None:
            self.idle.pop(key, None)  # named by the wake-up: poll it now
        self.wake.set()


@dataclass(frozen=True)
class Runtime:
    """What every part of a worker needs; one argument instead of nine."""

    tenancy: Tenancy
    registry: JobRegistry
    options: WorkerOptions
    state: WorkerState
    report: Report
    threads: WorkerThreads
    worker_id: str
    #: The queues claimed from (the options', else the registry's, else ``default``).
    queues: list[str]
    #: The tenants claimed for; ``None``: all.
    tenants: list[str] | None
