"""The resolver chain: every resolver is asked, and they must agree.

"First match wins" would let the cheapest resolver decide, and the cheapest
ones (host, header) are exactly those a client controls. So every configured
resolver is run, in order, and the answers are combined. Credentials (a
signed token, an API key, any resolver answering with
:attr:`~tenantry.web.resolvers.Strength.CREDENTIAL`) say which tenants the
caller may use; hints (host, header) only choose among those:

- nothing named: no tenant (the caller decides whether that is allowed);
- hints but no credential: :class:`CredentialRequiredError` (401), because
  anyone can send ``X-Tenant-ID: acme``. With ``require_credential=False``
  (a trusted network) the hints decide, and hints that disagree are an
  :class:`AmbiguousTenantError` (400);
- credentials that allow no common tenant, or a hint naming a tenant the
  credentials do not allow: :class:`TenantMismatchError` (403), since a token
  for ``acme`` on ``globex.example.com`` is someone reaching into another
  tenant;
- hints that disagree, each allowed (a token for both tenants):
  :class:`AmbiguousTenantError` (400);
- one hint, allowed: that tenant; no hint: the credentials' tenant, or, when
  they allow several, no tenant and :attr:`Resolution.choices` (the caller
  decides, usually a 400 asking to pick one).

A resolver that raises stops the chain; its error is the request's answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tenantry.errors import (
    AmbiguousTenantError,
    AuthenticationError,
    ConfigError,
    TenantMismatchError,
)
from tenantry.web.asgi import RequestInfo
from tenantry.web.resolvers import Candidate, Resolver, Strength


class CredentialRequiredError(AuthenticationError):
    """The request names a tenant only by host or header; a token or API key is required."""


@dataclass(frozen=True)
class Resolution:
    """What the chain found: the tenant id (or ``None``) and the agreeing candidates.

    *choices* is set when a credential allows several tenants and nothing
    picked one: the request is authenticated but has no tenant yet.
    """

    tenant_id: str | None
    candidates: tuple[Candidate, ...] = ()
    choices: frozenset[str] = frozenset()

    @property
    def authenticated(self) -> bool:
        """Whether a credential (not only a hint) vouches for the tenant."""
        return any(c.strength is Strength.CREDENTIAL for c in self.candidates)


class ResolverChain:
    """Runs resolvers in order and combines their candidates (see the module doc).

    *require_credential* (the default) refuses a request that names a tenant
    by hints alone; turn it off only where every client is trusted.
    """

    def __init__(self, resolvers: Sequence[Resolver], *, require_credential: bool = True) -> None:
        if not resolvers:
            raise ConfigError("a resolver chain needs at least one resolver")
        names = [r.name for r in resolvers]
        if len(set(names)) != len(names):
            raise ConfigError(f"resolver names must be unique: {names}")
        self.resolvers = tuple(resolvers)
        self.require_credential = require_credential

    async def resolve(self, request: RequestInfo) -> Resolution:
        candidates = []
        for resolver in self.resolvers:
            candidate = await resolver.resolve(request)
            if candidate is not None:
                candidates.append(candidate)
        return combine(candidates, require_credential=self.require_credential)


def _said(candidates: Sequence[Candidate]) -> str:
    return ", ".join(
        f"{c.source} says {c.tenant_id!r}"
        if c.tenant_id is not None
        else f"{c.source} allows {sorted(c.choices)}"
        for c in candidates
    )


def combine(candidates: Sequence[Candidate], *, require_credential: bool = True) -> Resolution:
    """Combine candidates into one tenant, or refuse (see the module doc)."""
    if not candidates:
        return Resolution(None)
    credentials = [c for c in candidates if c.strength is Strength.CREDENTIAL]
    hinted = {
        c.tenant_id
        for c in candidates
        if c.strength is not Strength.CREDENTIAL and c.tenant_id is not None
    }
    if not credentials:
        if require_credential:
            sources = " and ".join(c.source for c in candidates)
            raise CredentialRequiredError(
                f"a token or API key is required; the {sources} alone cannot choose a tenant"
            )
        if len(hinted) > 1:
            raise AmbiguousTenantError(f"the request names different tenants ({_said(candidates)})")
        return Resolution(candidates[0].tenant_id, tuple(candidates))
    allowed = frozenset.intersection(*(c.allowed for c in credentials))
    if not allowed or not hinted <= allowed:
        raise TenantMismatchError(f"the credential is for another tenant ({_said(candidates)})")
    if len(hinted) > 1:
        raise AmbiguousTenantError(f"the request names different tenants ({_said(candidates)})")
    chosen = hinted or allowed
    if len(chosen) == 1:
        return Resolution(next(iter(chosen)), tuple(candidates))
    return Resolution(None, tuple(candidates), choices=allowed)
