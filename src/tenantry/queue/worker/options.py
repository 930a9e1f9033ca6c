"""A worker's settings, validated once, shared by the library, the CLI, the service and the demo."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

from tenantry.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class WorkerOptions:
    """How a :class:`~tenantry.queue.worker.Worker` claims and runs jobs.

    The defaults suit an application's embedded worker; ``tenantry worker``
    and ``tenantry serve`` change only what they say they change.
    """

    #: Jobs run at once by this worker.
    concurrency: int = 10
    #: Jobs held beyond the running ones; ``None`` adapts between ``concurrency``
    #: and ``max_prefetch`` to the rate jobs finish.
    prefetch: int | None = None
    #: The adaptive prefetch's ceiling (default: 20 per slot, at most 1,000).
    max_prefetch: int | None = None
    #: Queues to claim from (default: the registry's queues, else ``default``).
    queues: Sequence[str] | None = None
    #: Stores to claim from (default: all).
    stores: Sequence[str] | None = None
    #: Tenants to claim for (default: all).
    tenants: Sequence[str] | None = None
    #: How long a claimed job is this worker's without a heartbeat.
    lease_seconds: float = 30.0
    #: Seconds between lease renewals (default: a third of the lease).
    heartbeat_interval: float | None = None
    #: Seconds between claims when no wake-up arrives.
    poll_interval: float = 1.0
    #: Seconds between rescues of jobs whose lease expired.
    rescue_interval: float = 5.0
    #: Seconds between re-reads of the catalog.
    refresh_interval: float = 10.0
    #: Seconds running jobs get to finish on a graceful stop.
    shutdown_grace: float = 30.0
    #: Most acknowledgements written in one statement.
    completion_batch: int = 500
    #: Seconds an acknowledgement waits for others to share its statement.
    ack_delay: float = 0.005
    #: Wake on NOTIFY (PostgreSQL) instead of waiting for the next poll.
    listen: bool = True
    #: Seconds before a job of a suspended tenant is looked at again.
    suspended_retry: float = 30.0
    #: Share slots between tenants by weight (False: oldest job first).
    fair: bool = True
    #: Longest wait between polls of a source that keeps coming back empty.
    idle_poll_max: float = 2.0
    #: Seconds between full re-syncs of every tenant's control row.
    full_sync_interval: float = 300.0
    #: This worker's id in leases and logs (default: host and process id).
    worker_id: str | None = None
    #: Freeze the process's heap once started (``gc.freeze``): fewer long garbage
    #: collections, but a reference cycle among the frozen objects is never
    #: freed. For processes that belong to tenantry (``tenantry worker``, ``serve``).
    freeze_gc: bool = False

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ConfigError("concurrency must be at least 1")
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
                raise ConfigError(f"{f.name} must not be negative (got {value!r})")
