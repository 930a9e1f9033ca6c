"""``/api/v1/tenants``: the catalog's tenants and their lifecycle."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from tenantry.service.api.deps import ERRORS, Service
from tenantry.service.api.schemas import (
    Limit,
    Offset,
    TenantIdPath,
    TenantIn,
    TenantOut,
    TenantPage,
    TenantPatch,
    Text,
)
from tenantry.tenancy.catalog import IsolationMode, TenantStatus

router = APIRouter()


@router.get("/tenants", response_model=TenantPage, tags=["tenants"], responses=ERRORS)
def list_tenants(
    svc: Service,
    status: TenantStatus | None = None,
    isolation: IsolationMode | None = None,
    store: Annotated[Text, Query(max_length=40)] | None = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> TenantPage:
    """Tenants of the catalog, by id, optionally filtered."""
    found = svc.tenantry.list_tenants(status=status, isolation=isolation, store=store)
    found.sort(key=lambda t: t.id)
    page = found[offset : offset + limit]
    return TenantPage(
        items=[TenantOut.of(t) for t in page], total=len(found), limit=limit, offset=offset
    )


@router.post(
    "/tenants", status_code=201, response_model=TenantOut, tags=["tenants"], responses=ERRORS
)
def create_tenant(svc: Service, body: TenantIn) -> TenantOut:
    """Register a tenant and provision its storage (idempotent DDL)."""
    return TenantOut.of(
        svc.tenantry.create_tenant(
            body.id,
            name=body.name,
            isolation=body.isolation,
            store=body.store,
            settings=body.settings,
        )
    )


@router.get("/tenants/{tenant_id}", response_model=TenantOut, tags=["tenants"], responses=ERRORS)
def show_tenant(svc: Service, tenant_id: TenantIdPath) -> TenantOut:
    return TenantOut.of(svc.tenantry.get_tenant(tenant_id))


@router.patch("/tenants/{tenant_id}", response_model=TenantOut, tags=["tenants"], responses=ERRORS)
def update_tenant(svc: Service, tenant_id: TenantIdPath, body: TenantPatch) -> TenantOut:
    """Change the name or replace the settings (queue settings are checked)."""
    return TenantOut.of(
        svc.tenantry.update_tenant(tenant_id, name=body.name, settings=body.settings)
    )


@router.post(
    "/tenants/{tenant_id}/suspend", response_model=TenantOut, tags=["tenants"], responses=ERRORS
)
def suspend_tenant(svc: Service, tenant_id: TenantIdPath) -> TenantOut:
    """Stop serving an active tenant: sessions refuse, its jobs wait."""
    return TenantOut.of(svc.tenantry.suspend_tenant(tenant_id))


@router.post(
    "/tenants/{tenant_id}/resume", response_model=TenantOut, tags=["tenants"], responses=ERRORS
)
def resume_tenant(svc: Service, tenant_id: TenantIdPath) -> TenantOut:
    return TenantOut.of(svc.tenantry.resume_tenant(tenant_id))


@router.delete("/tenants/{tenant_id}", status_code=204, tags=["tenants"], responses=ERRORS)
def delete_tenant(svc: Service, tenant_id: TenantIdPath) -> Response:
    """Delete a tenant with ALL of its data, jobs and API keys."""
    svc.tenantry.delete_tenant(tenant_id)
    return Response(status_code=204)
