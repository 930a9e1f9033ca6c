"""How a refused request is answered: HTTP status, error code, JSON body.

The mapping lives here, not on the exception classes, so that
``tenantry.errors`` stays free of HTTP and one table shows every answer a
client can get. Bodies are always ``{"error": {"code": ..., "message": ...}}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from tenantry.errors import (
    AmbiguousTenantError,
    AuthenticationError,
    InvalidTenantId,
    TenantMismatchError,
    TenantNotFoundError,
    TenantRequiredError,
    TenantResolutionError,
    TenantSuspendedError,
    TenantUnavailableError,
)
from tenantry.web.asgi import Receive, Scope, Send
from tenantry.web.chain import CredentialRequiredError

# Most specific first is not needed: the lookup walks the exception's MRO.
REFUSALS: dict[type[Exception], tuple[int, str]] = {
    CredentialRequiredError: (401, "credential_required"),
    AuthenticationError: (401, "invalid_credentials"),
    TenantMismatchError: (403, "tenant_mismatch"),
    AmbiguousTenantError: (400, "ambiguous_tenant"),
    TenantRequiredError: (400, "tenant_required"),
    TenantResolutionError: (400, "tenant_unresolved"),
    InvalidTenantId: (400, "invalid_tenant_id"),
    TenantNotFoundError: (404, "tenant_not_found"),
    TenantSuspendedError: (403, "tenant_suspended"),
    TenantUnavailableError: (503, "tenant_unavailable"),
}

# WebSocket close code for "policy violation": a refused handshake.
WS_POLICY_VIOLATION = 1008


@dataclass(frozen=True)
class Refusal:
    status: int
    code: str
    message: str
    headers: tuple[tuple[str, str], ...] = field(default=())

    def body(self) -> bytes:
        return json.dumps({"error": {"code": self.code, "message": self.message}}).encode()


def refusal_for(exc: Exception, *, retry_after: int = 30) -> Refusal | None:
    """The answer for *exc*, or ``None`` if it is not a refusal (a bug, a database outage)."""
    for cls in type(exc).__mro__:
        known = REFUSALS.get(cls)
        if known is not None:
            status, code = known
            headers: tuple[tuple[str, str], ...] = ()
            if status == 401:
                headers = (("www-authenticate", "Bearer"),)
            elif status == 503:
                headers = (("retry-after", str(retry_after)),)
            return Refusal(status, code, str(exc), headers)
    return None


async def send_refusal(scope: Scope, receive: Receive, send: Send, refusal: Refusal) -> None:
    """Answer an HTTP request with the JSON refusal, or reject a WebSocket handshake."""
    if scope["type"] == "websocket":
        message = await receive()  # the handshake's websocket.connect
        if message["type"] == "websocket.connect":
            await send(
                {
                    "type": "websocket.close",
                    "code": WS_POLICY_VIOLATION,
                    # A close reason is at most 123 bytes of UTF-8.
                    "reason": f"{refusal.code}: {refusal.message}".encode()[:120].decode(
                        errors="ignore"
                    ),
                }
            )
        return
    body = refusal.body()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *((k.encode("latin-1"), v.encode("latin-1")) for k, v in refusal.headers),
    ]
    await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
