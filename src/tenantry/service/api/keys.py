"""``/api/v1/tenants/{id}/api-keys``: a tenant's API keys, issued and revoked."""

from __future__ import annotations

from fastapi import APIRouter

from tenantry.service.api.deps import ERRORS, Service
from tenantry.service.api.schemas import (
    ApiKeyIn,
    ApiKeyList,
    ApiKeyOut,
    IssuedKeyOut,
    KeyIdPath,
    TenantIdPath,
)

router = APIRouter()


@router.get(
    "/tenants/{tenant_id}/api-keys", response_model=ApiKeyList, tags=["api keys"], responses=ERRORS
)
def list_api_keys(
    svc: Service, tenant_id: TenantIdPath, include_revoked: bool = True
) -> ApiKeyList:
    svc.tenantry.get_tenant(tenant_id)  # 404 for an unknown tenant, not an empty list
    keys = svc.tenantry.api_keys.list(tenant_id, include_revoked=include_revoked)
    return ApiKeyList(items=[ApiKeyOut.of(k) for k in keys])


@router.post(
    "/tenants/{tenant_id}/api-keys",
    status_code=201,
    response_model=IssuedKeyOut,
    tags=["api keys"],
    responses=ERRORS,
)
def issue_api_key(svc: Service, tenant_id: TenantIdPath, body: ApiKeyIn) -> IssuedKeyOut:
    """Issue a key for the tenant; the response is the only place the key appears."""
    issued = svc.tenantry.api_keys.issue(tenant_id, name=body.name)
    return IssuedKeyOut(key=issued.key, api_key=ApiKeyOut.of(issued.info))


@router.delete(
    "/tenants/{tenant_id}/api-keys/{key_id}",
    response_model=ApiKeyOut,
    tags=["api keys"],
    responses=ERRORS,
)
def revoke_api_key(svc: Service, tenant_id: TenantIdPath, key_id: KeyIdPath) -> ApiKeyOut:
    """Revoke a key for good (revoking twice is fine)."""
    return ApiKeyOut.of(svc.tenantry.api_keys.revoke(key_id, tenant_id=tenant_id))
