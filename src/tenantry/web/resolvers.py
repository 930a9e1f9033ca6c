"""Resolvers: each reads one part of a request and names a candidate tenant.

A resolver never decides alone. :class:`~tenantry.web.chain.ResolverChain`
collects every resolver's candidate and refuses the request when they disagree,
which is why each candidate carries a :class:`Strength`: a signed token or an
API key *proves* a tenant, a host name or a header only *suggests* one, and a
client can set a suggestion to anything it likes.

Resolvers return ``None`` when their part of the request is absent. They raise
when it is present but unusable: :class:`~tenantry.errors.AuthenticationError`
for a bad credential, :class:`~tenantry.errors.InvalidTenantId` or
:class:`~tenantry.errors.AmbiguousTenantError` for a bad hint. Raising (rather
than returning ``None``) is what stops a forged credential from quietly falling
through to a weaker resolver.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

from tenantry.errors import (
    AmbiguousTenantError,
    AuthenticationError,
    ConfigError,
    TenantNotFoundError,
)
from tenantry.tenancy.apikeys import KEY_PREFIX, ApiKeys
from tenantry.tenancy.ids import is_valid_tenant_id, validate_tenant_id
from tenantry.web.asgi import RequestInfo


class Strength(IntEnum):
    """How much a candidate can be trusted."""

    HINT = 1  # chosen freely by the client: host name, header
    CREDENTIAL = 2  # verified: a signed token, an issued API key


@dataclass(frozen=True)
class Candidate:
    """One resolver's answer: which tenant, from where, and how trustworthy.

    A credential may vouch for several tenants (a token issued to a user who
    belongs to more than one): then *tenant_id* is ``None`` and *choices* holds
    them, and a hint has to pick one (see :mod:`tenantry.web.chain`). Build
    such a candidate with :meth:`one_of`.
    """

    tenant_id: str | None
    source: str
    strength: Strength
    choices: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if (self.tenant_id is None) == (not self.choices):
            raise ConfigError("a candidate names either one tenant or a set of choices")
        if self.choices and self.strength is not Strength.CREDENTIAL:
            # A hint that offers several tenants would let the client pick among them.
            raise ConfigError("only a credential can vouch for several tenants")

    @classmethod
    def one_of(cls, tenant_ids: Iterable[str], source: str) -> Candidate:
        """A credential valid for every tenant in *tenant_ids* (one of them is named directly)."""
        choices = frozenset(tenant_ids)
        if len(choices) == 1:
            return cls(next(iter(choices)), source, Strength.CREDENTIAL)
        return cls(None, source, Strength.CREDENTIAL, choices)

    @property
    def allowed(self) -> frozenset[str]:
        """The tenants this candidate accepts."""
        return self.choices if self.tenant_id is None else frozenset((self.tenant_id,))


class Resolver(Protocol):
    """Anything with a ``name`` and an async ``resolve(request)``."""

    @property
    def name(self) -> str: ...

    async def resolve(self, request: RequestInfo) -> Candidate | None: ...


# A host name as sent by clients: letters, digits, dots, hyphens and (not strictly
# DNS, but accepted by browsers, and tenant ids have them) underscores.
_HOST_RE = re.compile(r"^[a-z0-9_](?:[a-z0-9_.-]{0,251}[a-z0-9_])?$")
_PORT_RE = re.compile(r"^[0-9]{1,5}$")


def normalize_host(raw: str | None) -> str | None:
    """Lower-case host without port or trailing dot; ``None`` if it is not a DNS name."""
    if raw is None:
        return None
    host = raw.strip().lower()
    name, sep, port = host.rpartition(":")
    if sep:
        if not _PORT_RE.fullmatch(port):
            return None  # IPv6 literal or junk: never a tenant's host
        host = name
    host = host.rstrip(".")
    return host if _HOST_RE.fullmatch(host) else None


class HostResolver:
    """The tenant from the request's ``Host``: a subdomain or an explicit mapping.

    ``acme.example.com`` names tenant ``acme`` when ``example.com`` is a base
    domain. A host under a base domain whose first label is not a tenant id
    (``my-co.example.com``, ``a.b.example.com``) is refused as an unknown
    tenant: it can only be a typo or a probe. A host that is under no base
    domain and not mapped is not this resolver's business and yields nothing.
    Custom domains go in *hosts* (``{"shop.acme.test": "acme"}``).
    """

    def __init__(
        self,
        base_domains: Iterable[str] = (),
        *,
        hosts: Mapping[str, str] | None = None,
        ignore_subdomains: Iterable[str] = ("www",),
        name: str = "host",
    ) -> None:
        bases = []
        for domain in base_domains:
            normal = normalize_host(domain)
            if normal is None:
                raise ConfigError(f"invalid base domain {domain!r}")
            bases.append(normal)
        # Longest first, so "eu.example.com" wins over "example.com".
        self.base_domains = tuple(sorted(set(bases), key=len, reverse=True))
        self.hosts: dict[str, str] = {}
        for host, tenant_id in (hosts or {}).items():
            normal = normalize_host(host)
            if normal is None:
                raise ConfigError(f"invalid host {host!r}")
            self.hosts[normal] = validate_tenant_id(tenant_id)
        if not self.base_domains and not self.hosts:
            raise ConfigError("HostResolver needs base_domains or hosts")
        self.ignore_subdomains = frozenset(s.lower() for s in ignore_subdomains)
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    async def resolve(self, request: RequestInfo) -> Candidate | None:
        return self.resolve_host(request.host)

    def resolve_host(self, raw_host: str | None) -> Candidate | None:
        host = normalize_host(raw_host)
        if host is None:
            return None
        mapped = self.hosts.get(host)
        if mapped is not None:
            return Candidate(mapped, self._name, Strength.HINT)
        for base in self.base_domains:
            if host == base:
                return None
            if host.endswith("." + base):
                label = host[: -len(base) - 1]
                if label in self.ignore_subdomains:
                    return None
                if not is_valid_tenant_id(label):
                    raise TenantNotFoundError(f"no tenant is served at host {host!r}")
                return Candidate(label, self._name, Strength.HINT)
        return None


class HeaderResolver:
    """The tenant named in a request header (``X-Tenant-ID`` by default).

    A header is whatever the client typed, so this is only a hint: by default
    it can only pick one of the tenants a credential allows, or agree with it.
    On its own it serves a request only behind
    ``TenantMiddleware(..., trust_hints=True)``, for trusted callers (an
    internal gateway).
    """

    def __init__(self, header: str = "X-Tenant-ID", *, name: str = "header") -> None:
        self.header = header.lower()
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    async def resolve(self, request: RequestInfo) -> Candidate | None:
        values = request.header_values(self.header)
        if not values:
            return None
        if len(set(values)) > 1:
            raise AmbiguousTenantError(f"the {self.header} header is sent with different values")
        return Candidate(validate_tenant_id(values[0]), self._name, Strength.HINT)


class APIKeyResolver:
    """The tenant owning an API key from ``Authorization: Bearer tk_...`` or ``X-API-Key``.

    Keys are issued and revoked through :class:`~tenantry.tenancy.apikeys.ApiKeys`
    (``tenantry.api_keys``). A key that is malformed, unknown or revoked is a
    401, never "no key". Bearer tokens that do not start with ``tk_`` are left
    to other resolvers (a JWT, say).
    """

    def __init__(
        self,
        keys: ApiKeys,
        *,
        header: str = "X-API-Key",
        bearer: bool = True,
        name: str = "api_key",
    ) -> None:
        self.keys = keys
        self.header = header.lower()
        self.bearer = bearer
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    def presented(self, request: RequestInfo) -> str | None:
        """The single key the request presents; raises if it presents two."""
        keys = {value.strip() for value in request.header_values(self.header)}
        if self.bearer:
            keys.update(t for t in request.bearer_tokens() if t.startswith(KEY_PREFIX))
        if len(keys) > 1:
            raise AuthenticationError("more than one API key presented")
        return keys.pop() if keys else None

    async def resolve(self, request: RequestInfo) -> Candidate | None:
        key = self.presented(request)
        if key is None:
            return None
        info = await self.keys.averify(key)
        return Candidate(info.tenant_id, self._name, Strength.CREDENTIAL)
