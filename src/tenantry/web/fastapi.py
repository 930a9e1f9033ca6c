"""FastAPI dependencies on top of :class:`~tenantry.web.middleware.TenantMiddleware`.

Importing this module needs FastAPI; nothing else in ``tenantry.web`` does.
The dependencies only read what the middleware put in the scope, so a route
cannot see a tenant the middleware did not check.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.applications import Starlette
from starlette.responses import Response

from tenantry.errors import ConfigError, TenantRequiredError
from tenantry.tenancy.catalog import Tenant
from tenantry.tenancy.facade import Tenancy
from tenantry.web.middleware import SCOPE_TENANTRY, tenant_of
from tenantry.web.refusals import REFUSALS, refusal_for


async def current_tenant_dep(request: Request) -> Tenant:
    """The request's tenant; on a tenant-optional path without one, a 400 refusal."""
    tenant = tenant_of(request.scope)
    if tenant is None:
        raise TenantRequiredError()
    return tenant


TenantDep = Annotated[Tenant, Depends(current_tenant_dep)]


async def tenant_session(request: Request, tenant: TenantDep) -> AsyncIterator[AsyncSession]:
    """An async session bound to the request's tenant, closed after the request."""
    tenantry = request.scope.get(SCOPE_TENANTRY)
    if not isinstance(tenantry, Tenancy):
        raise ConfigError("tenant_session needs TenantMiddleware in front of the app")
    async with tenantry.async_session() as session:
        yield session


TenantSessionDep = Annotated[AsyncSession, Depends(tenant_session)]


async def _refusal_response(request: Request, exc: Exception) -> Response:
    refusal = refusal_for(exc)
    if refusal is None:  # pragma: no cover - only refusal classes are registered
        raise exc
    return JSONResponse(
        {"error": {"code": refusal.code, "message": refusal.message}},
        status_code=refusal.status,
        headers=dict(refusal.headers),
    )


def add_error_handlers(app: Starlette) -> None:
    """Answer tenantry's refusal errors raised in routes like the middleware does.

    Without it, e.g. :data:`TenantDep` on a tenant-optional path with no
    tenant, or a tenant suspended mid-request, would surface as a 500.
    """
    for exc_class in REFUSALS:
        app.add_exception_handler(exc_class, _refusal_response)
