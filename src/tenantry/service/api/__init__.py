"""The admin JSON API under ``/api/v1``: tenants, API keys, jobs, stats.

Every route requires the admin token (a dependency of the router that
assembles them all, so a new route cannot forget it). Routes that touch the
database are plain ``def`` functions: FastAPI runs them in its thread pool, so
tenantry's blocking calls never stall the event loop that the embedded worker
shares.

The schemas (:mod:`.schemas`) are apart from the routes, which are grouped by
resource; the order they are included in here is the order of the OpenAPI
document.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends

from tenantry.service.api import jobs, keys, meta, tenants
from tenantry.service.api.deps import require_admin

router = APIRouter(prefix="/api/v1", dependencies=[Depends(require_admin)])
for _resource in (tenants, keys, jobs, meta):
    router.include_router(_resource.router)

__all__ = ["router"]
