"""Credentials decide, hints choose: the chain's rules and multi-tenant tokens."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest

from tenantry.errors import (
    AmbiguousTenantError,
    AuthenticationError,
    ConfigError,
    TenantMismatchError,
)
from tenantry.web import (
    Candidate,
    CredentialRequiredError,
    JWTResolver,
    RequestInfo,
    Strength,
    refusal_for,
)
from tenantry.web.chain import combine

SECRET = "unit-test-secret-0123456789abcdef0123"
HINT, CREDENTIAL = Strength.HINT, Strength.CREDENTIAL
BOTH = Candidate.one_of(["acme", "globex"], "jwt")


def token(**claims: Any) -> RequestInfo:
    tok = jwt.encode({"exp": int(time.time()) + 60, **claims}, SECRET, algorithm="HS256")
    return RequestInfo.build("/", {"authorization": f"Bearer {tok}"})


def test_hints_without_a_credential_are_refused_by_default() -> None:
    for hints in (
        [Candidate("acme", "header", HINT)],
        [Candidate("acme", "host", HINT), Candidate("acme", "header", HINT)],
        [Candidate("acme", "host", HINT), Candidate("globex", "header", HINT)],
    ):
        with pytest.raises(CredentialRequiredError) as caught:
            combine(hints)
        refusal = refusal_for(caught.value)
        assert refusal is not None
        assert (refusal.status, refusal.code) == (401, "credential_required")


def test_trusted_hints_decide_alone() -> None:
    got = combine([Candidate("acme", "header", HINT)], require_credential=False)
    assert got.tenant_id == "acme"
    assert not got.authenticated


def test_a_multi_tenant_credential_needs_a_hint_to_choose() -> None:
    got = combine([BOTH])
    assert got.tenant_id is None
    assert got.choices == {"acme", "globex"}
    assert got.authenticated
    chosen = combine([BOTH, Candidate("globex", "header", HINT)])
    assert chosen.tenant_id == "globex"
    assert chosen.choices == frozenset()


def test_a_hint_outside_the_credentials_tenants_is_a_mismatch() -> None:
    with pytest.raises(TenantMismatchError):
        combine([BOTH, Candidate("initech", "header", HINT)])
    with pytest.raises(TenantMismatchError):
        combine([BOTH, Candidate("acme", "host", HINT), Candidate("initech", "header", HINT)])


def test_allowed_hints_that_disagree_are_ambiguous() -> None:
    with pytest.raises(AmbiguousTenantError):
        combine([BOTH, Candidate("acme", "host", HINT), Candidate("globex", "header", HINT)])


def test_credentials_together_allow_only_their_common_tenants() -> None:
    assert combine([BOTH, Candidate("acme", "api_key", CREDENTIAL)]).tenant_id == "acme"
    with pytest.raises(TenantMismatchError):
        combine([BOTH, Candidate("initech", "api_key", CREDENTIAL)])


def test_candidates_are_checked() -> None:
    assert Candidate.one_of(["acme"], "jwt") == Candidate("acme", "jwt", CREDENTIAL)
    assert BOTH.allowed == {"acme", "globex"}
    with pytest.raises(ConfigError):
        Candidate(None, "jwt", CREDENTIAL)
    with pytest.raises(ConfigError):
        Candidate("acme", "jwt", CREDENTIAL, frozenset({"globex"}))
    with pytest.raises(ConfigError):
        Candidate(None, "header", HINT, frozenset({"acme", "globex"}))


async def test_jwt_tenants_claim() -> None:
    resolver = JWTResolver(SECRET, algorithms=["HS256"], tenants_claim="tenants")
    assert await resolver.resolve(token(tenants=["acme", "globex"])) == BOTH
    got = await resolver.resolve(token(tenants=["acme"]))
    assert got == Candidate("acme", "jwt", CREDENTIAL)
    assert await resolver.resolve(token(tenant_id="acme")) == got


@pytest.mark.parametrize(
    "claims",
    [
        {"tenants": []},
        {"tenants": "acme"},
        {"tenants": ["acme", "Not Valid"]},
        {"tenants": ["acme", 7]},
        {"tenants": ["acme"], "tenant_id": "acme"},
        {},
    ],
)
async def test_bad_tenants_claims_are_authentication_errors(claims: dict[str, Any]) -> None:
    resolver = JWTResolver(SECRET, algorithms=["HS256"], tenants_claim="tenants")
    with pytest.raises(AuthenticationError):
        await resolver.resolve(token(**claims))


async def test_tenants_claim_is_off_unless_configured() -> None:
    with pytest.raises(AuthenticationError, match="tenant_id"):
        await JWTResolver(SECRET, algorithms=["HS256"]).resolve(token(tenants=["acme"]))
    with pytest.raises(ConfigError):
        JWTResolver(SECRET, algorithms=["HS256"], tenants_claim="tenant_id")
