"""tenantry: tenant-isolated persistence and a transactional SQL job queue.

The names here are the ones an application uses. Errors live in
:mod:`tenantry.errors`; the web layer in :mod:`tenantry.web`; queue
operations (retry, cancel, purge, stats) in :class:`tenantry.queue.QueueAdmin`.
"""

from __future__ import annotations

from tenantry.errors import TenantryError
from tenantry.queue import (
    Job,
    JobContext,
    JobRegistry,
    JobState,
    Queue,
    RetryPolicy,
    Worker,
    WorkerOptions,
)
from tenantry.tenancy.catalog import IsolationMode, Tenant, TenantStatus
from tenantry.tenancy.config import StoreConfig, TenantryConfig, load_config
from tenantry.tenancy.context import (
    TenantThreadPoolExecutor,
    bind_context,
    current_tenant,
    current_tenant_or_none,
    no_tenant,
    tenant_context,
)
from tenantry.tenancy.facade import Tenancy
from tenantry.tenancy.logs import TenantContextFilter
from tenantry.tenancy.models import GlobalBase, TenantBase, TenantScoped
from tenantry.tenantry import Tenantry

__version__ = "0.1.0"

__all__ = [
    "GlobalBase",
    "IsolationMode",
    "Job",
    "JobContext",
    "JobRegistry",
    "JobState",
    "Queue",
    "RetryPolicy",
    "StoreConfig",
    "Tenancy",
    "Tenant",
    "TenantBase",
    "TenantContextFilter",
    "TenantScoped",
    "TenantStatus",
    "TenantThreadPoolExecutor",
    "Tenantry",
    "TenantryConfig",
    "TenantryError",
    "Worker",
    "WorkerOptions",
    "__version__",
    "bind_context",
    "current_tenant",
    "current_tenant_or_none",
    "load_config",
    "no_tenant",
    "tenant_context",
]
