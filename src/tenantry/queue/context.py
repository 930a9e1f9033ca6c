"""What a handler receives besides its payload."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tenantry.queue.job import Job

if TYPE_CHECKING:
    from tenantry.tenancy.facade import Tenancy


@dataclass
class JobContext:
    """The running job, its tenant, and (for transactional handlers) its session.

    ``session`` is a sync ``Session`` for sync handlers and an ``AsyncSession``
    for async ones; it is ``None`` for non-transactional handlers, which open
    their own with ``ctx.tenantry.session()`` (the tenant is already set).
    """

    job: Job
    tenantry: Tenancy
    worker_id: str
    logger: logging.Logger
    session: Any = None
    #: Set when the worker learns (by heartbeat) that this attempt's lease is gone:
    #: the job was cancelled or taken over. Long handlers may check it and stop;
    #: whatever they return is void either way.
    lease_lost: bool = False

    @property
    def tenant_id(self) -> str:
        return self.job.tenant_id

    @property
    def attempt(self) -> int:
        return self.job.attempt
