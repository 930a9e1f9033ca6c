"""tenantry: tenant-isolated persistence and a transactional SQL job queue."""

from __future__ import annotations

from tenantry.errors import (
    ConfigError,
    CrossTenantAccessError,
    InvalidTenantId,
    JobNotFoundError,
    JobStateError,
    LeaseLostError,
    PayloadValidationError,
    QueueError,
    QueueUnavailableError,
    StoreNotFoundError,
    TenantExistsError,
    TenantNotFoundError,
    TenantNotSetError,
    TenantryError,
    TenantStateError,
    TenantSuspendedError,
    TenantUnavailableError,
    UnknownJobKind,
    UnsupportedIsolation,
)
from tenantry.queue import (
    Job,
    JobContext,
    JobRegistry,
    JobState,
    Queue,
    QueueSettings,
    QueueStats,
    RetryPolicy,
    Worker,
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
from tenantry.tenancy.ids import validate_tenant_id
from tenantry.tenancy.logs import TenantContextFilter
from tenantry.tenancy.models import (
    GlobalBase,
    TenantBase,
    TenantScoped,
    global_metadata,
    tenant_metadata,
)
from tenantry.tenancy.session import ALL_TENANTS, TenantSession
from tenantry.tenantry import Tenantry

__version__ = "0.1.0"

__all__ = [
    "ALL_TENANTS",
    "ConfigError",
    "CrossTenantAccessError",
    "GlobalBase",
    "InvalidTenantId",
    "IsolationMode",
    "Job",
    "JobContext",
    "JobNotFoundError",
    "JobRegistry",
    "JobState",
    "JobStateError",
    "LeaseLostError",
    "PayloadValidationError",
    "Queue",
    "QueueError",
    "QueueSettings",
    "QueueStats",
    "QueueUnavailableError",
    "RetryPolicy",
    "StoreConfig",
    "StoreNotFoundError",
    "Tenant",
    "TenantBase",
    "TenantContextFilter",
    "TenantExistsError",
    "TenantNotFoundError",
    "TenantNotSetError",
    "TenantScoped",
    "TenantSession",
    "TenantStateError",
    "TenantStatus",
    "TenantSuspendedError",
    "TenantThreadPoolExecutor",
    "TenantUnavailableError",
    "Tenantry",
    "TenantryConfig",
    "TenantryError",
    "UnknownJobKind",
    "UnsupportedIsolation",
    "Worker",
    "__version__",
    "bind_context",
    "current_tenant",
    "current_tenant_or_none",
    "global_metadata",
    "load_config",
    "no_tenant",
    "tenant_context",
    "tenant_metadata",
    "validate_tenant_id",
]
