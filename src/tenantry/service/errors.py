"""How the service answers tenantry's errors: HTTP status, error code, JSON body.

The admin API is used by operators and scripts, so every answer that is not a
success has the same shape, ``{"error": {"code": ..., "message": ...}}``, and
bad input is never a 500. The table is separate from the web middleware's
(:mod:`tenantry.web.refusals`) because the audiences differ: for a tenant's
request a suspended tenant is a 403, for the operator who asks to enqueue on
its behalf it is a 409 (the tenant's state conflicts with the request).
"""

from __future__ import annotations

from typing import Any

from tenantry.errors import (
    ApiKeyNotFoundError,
    AuthenticationError,
    ConfigError,
    CrossTenantAccessError,
    InvalidIdentifierError,
    InvalidTenantId,
    JobNotFoundError,
    JobStateError,
    NoJobRegistryError,
    PayloadValidationError,
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

#: Looked up along the exception's MRO, so the most specific class wins.
SERVICE_ERRORS: dict[type[Exception], tuple[int, str]] = {
    AuthenticationError: (401, "unauthorized"),
    TenantNotFoundError: (404, "tenant_not_found"),
    JobNotFoundError: (404, "job_not_found"),
    ApiKeyNotFoundError: (404, "api_key_not_found"),
    TenantExistsError: (409, "tenant_exists"),
    TenantStateError: (409, "tenant_state"),
    TenantSuspendedError: (409, "tenant_suspended"),
    TenantUnavailableError: (409, "tenant_unavailable"),
    JobStateError: (409, "job_state"),
    NoJobRegistryError: (409, "no_job_registry"),
    InvalidTenantId: (422, "invalid_tenant_id"),
    InvalidIdentifierError: (422, "invalid_identifier"),
    UnsupportedIsolation: (422, "unsupported_isolation"),
    StoreNotFoundError: (422, "store_not_found"),
    PayloadValidationError: (422, "invalid_payload"),
    UnknownJobKind: (422, "unknown_job_kind"),
    ConfigError: (422, "invalid_request"),
    QueueUnavailableError: (503, "queue_unavailable"),
    # These mean a bug in tenantry or the service, not bad input.
    TenantNotSetError: (500, "internal_error"),
    CrossTenantAccessError: (500, "internal_error"),
    TenantryError: (400, "bad_request"),
}


def status_for(exc: BaseException) -> tuple[int, str] | None:
    """``(status, code)`` for a tenantry error, ``None`` for anything else."""
    for cls in type(exc).__mro__:
        found = SERVICE_ERRORS.get(cls)
        if found is not None:
            return found
    return None


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **extra}}
