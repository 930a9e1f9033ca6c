"""The worker: claims jobs, runs their handlers with the tenant set, records outcomes."""

from __future__ import annotations

from tenantry.errors import JobTimeoutError
from tenantry.queue.worker.observe import (
    Signal,
    TenantCounters,
    WorkerObserver,
    WorkerSignals,
    WorkerStats,
)
from tenantry.queue.worker.options import WorkerOptions
from tenantry.queue.worker.worker import Worker

__all__ = [
    "JobTimeoutError",
    "Signal",
    "TenantCounters",
    "Worker",
    "WorkerObserver",
    "WorkerOptions",
    "WorkerSignals",
    "WorkerStats",
]
