"""tenantry: tenant-isolated persistence and a transactional SQL job queue.

The names here are the ones an application uses. Errors live in
:mod:`tenantry.errors`; the web layer in :mod:`tenantry.web`; queue
operations (retry, cancel, purge, stats) in :class:`tenantry.queue.QueueAdmin`.

Importing this package imports nothing else: each name loads its module on
first use (PEP 562), so ``import tenantry`` and ``tenantry --help`` stay fast
and a program pays for SQLAlchemy only when it touches something that needs
it. Type checkers and IDEs see the names through the ``TYPE_CHECKING`` imports
below.
"""

from __future__ import annotations

import importlib

#: ``typing.TYPE_CHECKING`` without importing :mod:`typing` (type checkers treat
#: any name ``TYPE_CHECKING`` as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
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
    from tenantry.tenancy.logs import JsonFormatter as JsonLogFormatter
    from tenantry.tenancy.logs import TenantContextFilter
    from tenantry.tenancy.models import GlobalBase, TenantBase, TenantScoped
    from tenantry.tenantry import Tenantry

__version__ = "0.1.0"

#: Where each public name lives: ``name -> (module, attribute)``.
_LAZY: dict[str, tuple[str, str]] = {
    "TenantryError": ("tenantry.errors", "TenantryError"),
    **{
        name: ("tenantry.queue", name)
        for name in (
            "Job",
            "JobContext",
            "JobRegistry",
            "JobState",
            "Queue",
            "RetryPolicy",
            "Worker",
            "WorkerOptions",
        )
    },
    **{
        name: ("tenantry.tenancy.catalog", name)
        for name in ("IsolationMode", "Tenant", "TenantStatus")
    },
    **{
        name: ("tenantry.tenancy.config", name)
        for name in ("StoreConfig", "TenantryConfig", "load_config")
    },
    **{
        name: ("tenantry.tenancy.context", name)
        for name in (
            "TenantThreadPoolExecutor",
            "bind_context",
            "current_tenant",
            "current_tenant_or_none",
            "no_tenant",
            "tenant_context",
        )
    },
    "Tenancy": ("tenantry.tenancy.facade", "Tenancy"),
    "JsonLogFormatter": ("tenantry.tenancy.logs", "JsonFormatter"),
    "TenantContextFilter": ("tenantry.tenancy.logs", "TenantContextFilter"),
    **{
        name: ("tenantry.tenancy.models", name)
        for name in ("GlobalBase", "TenantBase", "TenantScoped")
    },
    "Tenantry": ("tenantry.tenantry", "Tenantry"),
}


def __getattr__(name: str) -> object:
    """Import the module that holds *name* on first access, then keep the name here."""
    try:
        module, attribute = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'tenantry' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # later lookups find it without calling __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "GlobalBase",
    "IsolationMode",
    "Job",
    "JobContext",
    "JobRegistry",
    "JobState",
    "JsonLogFormatter",
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
