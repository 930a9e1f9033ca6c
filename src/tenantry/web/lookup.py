"""Turn a resolved tenant id into a tenant that may be served, without blocking the loop.

The same rules as :meth:`Tenantry.session` (suspended and not-yet-active
tenants are refused), applied before the application runs, so a request for a
suspended tenant is answered with a clear 403/503 instead of failing halfway
through the handler on its first database access.
"""

from __future__ import annotations

import asyncio

from tenantry.errors import TenantSuspendedError, TenantUnavailableError
from tenantry.tenancy.catalog import Catalog, Tenant, TenantStatus
from tenantry.tenancy.ids import validate_tenant_id


async def servable_tenant(catalog: Catalog, tenant_id: str) -> Tenant:
    """The active tenant *tenant_id*; raises if it is unknown, suspended or unavailable.

    A fresh cache entry answers at once; a miss reads the catalog in a worker
    thread (``asyncio.to_thread``) because the catalog uses a sync engine.
    """
    validate_tenant_id(tenant_id)  # before anything else sees it, SQL included
    tenant = catalog.get_cached(tenant_id)
    if tenant is None:
        tenant = await asyncio.to_thread(catalog.get, tenant_id)
    if tenant.status is TenantStatus.SUSPENDED:
        raise TenantSuspendedError(f"tenant {tenant_id!r} is suspended")
    if tenant.status is not TenantStatus.ACTIVE:
        raise TenantUnavailableError(f"tenant {tenant_id!r} is {tenant.status.value}")
    return tenant
