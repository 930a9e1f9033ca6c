"""Tenant resolution for ASGI web apps: resolvers, API keys and ``TenantMiddleware``.

FastAPI dependencies are in :mod:`tenantry.web.fastapi` (imported separately
because it needs FastAPI); ``JWTResolver`` needs PyJWT only when one is built.
"""

from __future__ import annotations

from tenantry.tenancy.apikeys import ApiKey, ApiKeys, IssuedApiKey
from tenantry.web.asgi import RequestInfo
from tenantry.web.chain import CredentialRequiredError, Resolution, ResolverChain
from tenantry.web.middleware import TenantMiddleware, tenant_of
from tenantry.web.refusals import Refusal, refusal_for
from tenantry.web.resolvers import (
    APIKeyResolver,
    Candidate,
    HeaderResolver,
    HostResolver,
    Resolver,
    Strength,
)
from tenantry.web.tokens import JWTResolver

__all__ = [
    "APIKeyResolver",
    "ApiKey",
    "ApiKeys",
    "Candidate",
    "CredentialRequiredError",
    "HeaderResolver",
    "HostResolver",
    "IssuedApiKey",
    "JWTResolver",
    "Refusal",
    "RequestInfo",
    "Resolution",
    "Resolver",
    "ResolverChain",
    "Strength",
    "TenantMiddleware",
    "refusal_for",
    "tenant_of",
]
