"""The transactional job queue: jobs are rows next to the tenant's data."""

from __future__ import annotations

from tenantry.queue.admin import QueueAdmin
from tenantry.queue.client import Queue
from tenantry.queue.context import JobContext
from tenantry.queue.control import QueueSettings
from tenantry.queue.enqueued import EnqueuedJob, EnqueuedJobs
from tenantry.queue.job import Job, JobState
from tenantry.queue.registry import Handler, JobRegistry
from tenantry.queue.retry import RetryPolicy
from tenantry.queue.stats import QueueStats, TenantQueueStats
from tenantry.queue.worker import (
    JobTimeoutError,
    TenantCounters,
    Worker,
    WorkerObserver,
    WorkerOptions,
    WorkerStats,
)

__all__ = [
    "EnqueuedJob",
    "EnqueuedJobs",
    "Handler",
    "Job",
    "JobContext",
    "JobRegistry",
    "JobState",
    "JobTimeoutError",
    "Queue",
    "QueueAdmin",
    "QueueSettings",
    "QueueStats",
    "RetryPolicy",
    "TenantCounters",
    "TenantQueueStats",
    "Worker",
    "WorkerObserver",
    "WorkerOptions",
    "WorkerStats",
]
