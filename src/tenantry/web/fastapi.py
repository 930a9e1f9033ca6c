"""FastAPI dependencies on top of :class:`~tenantry.web.middleware.TenantMiddleware`.

Importing this module needs FastAPI; nothing else in ``tenantry.web`` does.
The dependencies only read what the middleware put in the scope, so a route
cannot see a tenant the middleware did not check.

There is a session dependency for each kind of endpoint: ``TenantSessionDep``
(an ``AsyncSession``) for ``async def`` routes and ``SyncTenantSessionDep`` (a
``Session``) for ``def`` routes, which FastAPI runs in a worker thread where a
blocking session does not stall the event loop.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session
from starlette.applications import Starlette
from starlette.responses import Response

from tenantry.errors import ConfigError, TenantRequiredError
from tenantry.tenancy.catalog import Tenant
from tenantry.tenancy.context import tenant_context
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


def _tenancy_of(request: Request, dependency: str) -> Tenancy:
    tenantry = request.scope.get(SCOPE_TENANTRY)
    if not isinstance(tenantry, Tenancy):
        raise ConfigError(f"{dependency} needs TenantMiddleware in front of the app")
    return tenantry


async def tenant_session(request: Request, tenant: TenantDep) -> AsyncIterator[AsyncSession]:
    """An async session bound to the request's tenant, closed after the request."""
    async with _tenancy_of(request, "tenant_session").async_session() as session:
        yield session


def sync_tenant_session(request: Request, tenant: TenantDep) -> Iterator[Session]:
    """A session bound to the request's tenant, for ``def`` endpoints; closed after the request.

    FastAPI runs this in a worker thread. The session is opened for the
    tenant the middleware checked, named explicitly rather than read from the
    thread's copy of the context, and closed (its transaction rolled back if
    the endpoint did not commit) once the response is done.
    """
    tenancy = _tenancy_of(request, "sync_tenant_session")
    with tenant_context(tenant.id):
        session = tenancy.session()
    try:
        yield session
    finally:
        session.close()


TenantSessionDep = Annotated[AsyncSession, Depends(tenant_session)]
SyncTenantSessionDep = Annotated[Session, Depends(sync_tenant_session)]


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
