"""The transactional job queue: jobs are rows next to the tenant's data."""

from __future__ import annotations

from tenantry.queue.client import EnqueuedJob, Queue
from tenantry.queue.context import JobContext
from tenantry.queue.job import Job, JobState
from tenantry.queue.registry import Handler, JobRegistry
from tenantry.queue.retry import RetryPolicy
from tenantry.queue.worker import JobTimeoutError, Worker, WorkerStats

__all__ = [
    "EnqueuedJob",
    "Handler",
    "Job",
    "JobContext",
    "JobRegistry",
    "JobState",
    "JobTimeoutError",
    "Queue",
    "RetryPolicy",
    "Worker",
    "WorkerStats",
]
