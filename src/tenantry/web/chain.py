"""The resolver chain: every resolver is asked, and they must agree.

"First match wins" would let the cheapest resolver decide, and the cheapest
ones (host, header) are exactly those a client controls. So every configured
resolver is run, in order, and the answers are combined:

- nothing named: no tenant (the caller decides whether that is allowed);
- all candidates name one tenant: that tenant;
- they disagree and one is a credential: :class:`TenantMismatchError` (403),
  since a token for ``acme`` on ``globex.example.com`` is someone reaching
  into another tenant;
- they disagree and all are hints: :class:`AmbiguousTenantError` (400).

A resolver that raises stops the chain; its error is the request's answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tenantry.errors import AmbiguousTenantError, ConfigError, TenantMismatchError
from tenantry.web.asgi import RequestInfo
from tenantry.web.resolvers import Candidate, Resolver, Strength


@dataclass(frozen=True)
class Resolution:
    """What the chain found: the tenant id (or ``None``) and the agreeing candidates."""

    tenant_id: str | None
    candidates: tuple[Candidate, ...] = ()

    @property
    def authenticated(self) -> bool:
        """Whether a credential (not only a hint) vouches for the tenant."""
        return any(c.strength is Strength.CREDENTIAL for c in self.candidates)


class ResolverChain:
    """Runs resolvers in order and combines their candidates (see the module doc)."""

    def __init__(self, resolvers: Sequence[Resolver]) -> None:
        if not resolvers:
            raise ConfigError("a resolver chain needs at least one resolver")
        names = [r.name for r in resolvers]
        if len(set(names)) != len(names):
            raise ConfigError(f"resolver names must be unique: {names}")
        self.resolvers = tuple(resolvers)

    async def resolve(self, request: RequestInfo) -> Resolution:
        candidates = []
        for resolver in self.resolvers:
            candidate = await resolver.resolve(request)
            if candidate is not None:
                candidates.append(candidate)
        return combine(candidates)


def combine(candidates: Sequence[Candidate]) -> Resolution:
    """Combine candidates into one tenant, or refuse (see the module doc)."""
    if not candidates:
        return Resolution(None)
    named = {c.tenant_id for c in candidates}
    if len(named) == 1:
        return Resolution(candidates[0].tenant_id, tuple(candidates))
    said = ", ".join(f"{c.source} says {c.tenant_id!r}" for c in candidates)
    if any(c.strength is Strength.CREDENTIAL for c in candidates):
        raise TenantMismatchError(f"the credential is for another tenant ({said})")
    raise AmbiguousTenantError(f"the request names different tenants ({said})")
