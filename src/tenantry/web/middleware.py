"""``TenantMiddleware``: resolve the tenant, refuse or run the app inside its context.

Pure ASGI (no framework import), so it wraps Starlette, FastAPI or any other
ASGI application. The tenant context is entered *around* the downstream
``await app(scope, receive, send)``, and that call only returns once the whole
response is sent, so everything the request runs sees the tenant: the handler,
a streaming body's iterator, Starlette background tasks (run after the
response, still inside the call) and any asyncio task they start (tasks copy
the context). When the call returns or raises, the previous context is
restored, so nothing is left behind for the next request on the same task.

It is deliberately not a ``BaseHTTPMiddleware``: that runs the app in a
separate task and has had context-propagation bugs of its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from tenantry.errors import ConfigError, TenantRequiredError, TenantryError
from tenantry.tenancy.catalog import Tenant
from tenantry.tenancy.context import no_tenant, tenant_context
from tenantry.tenancy.facade import Tenancy
from tenantry.tenancy.logs import get_logger
from tenantry.web.asgi import ASGIApp, Receive, RequestInfo, Scope, Send
from tenantry.web.chain import Resolution, ResolverChain
from tenantry.web.lookup import servable_tenant
from tenantry.web.refusals import refusal_for, send_refusal
from tenantry.web.resolvers import HeaderResolver, HostResolver, Resolver

log = get_logger(__name__)

# Where the middleware leaves its results in the ASGI scope.
SCOPE_TENANT = "tenantry.tenant"
SCOPE_RESOLUTION = "tenantry.resolution"
SCOPE_TENANTRY = "tenantry"


def path_matches(path: str, rules: Iterable[str]) -> bool:
    """``/health`` matches ``/health`` and ``/health/live``, not ``/healthz``."""
    return any(path == rule or path.startswith(rule.rstrip("/") + "/") for rule in rules)


def tenant_of(scope: Scope) -> Tenant | None:
    """The tenant :class:`TenantMiddleware` resolved for this request, if any."""
    tenant = scope.get(SCOPE_TENANT)
    return tenant if isinstance(tenant, Tenant) else None


class TenantMiddleware:
    """Resolve each request's tenant and run the app inside ``tenant_context``.

    *resolvers* are all asked, in order (see :mod:`tenantry.web.chain`). A
    request gets a tenant only from a credential (a token, an API key): the
    host and headers merely pick one of the tenants it allows, and a request
    naming a tenant by them alone is refused with 401 ``credential_required``.
    *trust_hints* lifts that for apps only trusted clients can reach (behind
    an internal gateway): any client can then choose a tenant by host or
    header, so it is logged as a warning when the middleware is built.
    *exclude_paths* bypass the middleware entirely (health checks, metrics).
    On *optional_paths* a request naming no tenant runs with no tenant set;
    one that does name a tenant is checked exactly as elsewhere. Everywhere
    else a request naming no tenant gets 400.

    The resolved :class:`~tenantry.tenancy.catalog.Tenant` (or ``None``) is stored as
    ``scope["tenantry.tenant"]`` and ``scope["state"]["tenant"]`` (Starlette's
    ``request.state.tenant``); the ``Tenantry`` as ``scope["tenantry"]``.
    """

    def __init__(
        self,
        app: ASGIApp,
        tenantry: Tenancy,
        resolvers: Sequence[Resolver],
        *,
        exclude_paths: Iterable[str] = (),
        optional_paths: Iterable[str] = (),
        retry_after: int = 30,
        trust_hints: bool = False,
    ) -> None:
        self.app = app
        self.tenantry = tenantry
        self.chain = ResolverChain(resolvers, require_credential=not trust_hints)
        self.trust_hints = trust_hints
        if trust_hints:
            log.warning(
                "TenantMiddleware(trust_hints=True): any client can choose a tenant by "
                "host or header (%s); serve this app to trusted networks only",
                ", ".join(r.name for r in resolvers),
            )
        elif all(isinstance(r, (HostResolver, HeaderResolver)) for r in resolvers):
            # Every request would be refused; say so now rather than at the first request.
            raise ConfigError(
                "these resolvers only read hints (host, header), and a credential is "
                "required: add a JWTResolver or APIKeyResolver, or pass trust_hints=True "
                "if only trusted clients can reach this app"
            )
        self.exclude_paths = tuple(exclude_paths)
        self.optional_paths = tuple(optional_paths)
        self.retry_after = retry_after

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or path_matches(
            scope.get("path", ""), self.exclude_paths
        ):
            await self.app(scope, receive, send)
            return
        try:
            resolution, tenant = await self.resolve(RequestInfo.from_scope(scope))
        except TenantryError as exc:
            refusal = refusal_for(exc, retry_after=self.retry_after)
            if refusal is None:
                raise
            log.info(
                "refused %s %s: %d %s",
                scope["type"],
                scope.get("path"),
                refusal.status,
                refusal.code,
            )
            await send_refusal(scope, receive, send, refusal)
            return
        scope[SCOPE_TENANTRY] = self.tenantry
        scope[SCOPE_TENANT] = tenant
        scope[SCOPE_RESOLUTION] = resolution
        # A copy: the server may share one state dict (lifespan state) between requests.
        state: dict[str, Any] = dict(scope.get("state") or {})
        state["tenant"] = tenant
        scope["state"] = state
        if tenant is None:
            # Also clears a tenant that the caller's context may carry.
            with no_tenant():
                await self.app(scope, receive, send)
        else:
            with tenant_context(tenant.id):
                await self.app(scope, receive, send)

    async def resolve(self, request: RequestInfo) -> tuple[Resolution, Tenant | None]:
        """The request's tenant, checked against the catalog; raises a refusal error."""
        resolution = await self.chain.resolve(request)
        if resolution.tenant_id is None:
            if path_matches(request.path, self.optional_paths):
                return resolution, None
            if resolution.choices:
                raise TenantRequiredError(
                    f"the credential is valid for {len(resolution.choices)} tenants; "
                    "choose one by host or header"
                )
            raise TenantRequiredError()
        return resolution, await servable_tenant(self.tenantry.catalog, resolution.tenant_id)
