"""What every admin API route shares: the admin-token check, the service, the error docs."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from tenantry.errors import AuthenticationError
from tenantry.service.state import ServiceState, service_of

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="adminToken",
    description="The service's admin token (--admin-token / TENANTRY_ADMIN_TOKEN).",
)


def require_admin(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> None:
    """Refuse the request (401) unless it carries the admin token."""
    if not service_of(request).auth.is_admin(request.headers.get("authorization")):
        raise AuthenticationError("this endpoint needs the admin token (Authorization: Bearer ...)")


Service = Annotated[ServiceState, Depends(service_of)]
#: The failures every route documents in the OpenAPI description.
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "The admin token is missing or wrong."},
    404: {"description": "No such tenant, job or API key."},
    409: {"description": "The tenant's or job's state does not allow this."},
    422: {"description": "Invalid input."},
}
