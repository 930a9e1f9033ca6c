"""Combining resolvers' answers, and how each refusal is answered."""

from __future__ import annotations

import json

import pytest

from tenantry import TenantryError
from tenantry.errors import (
    AmbiguousTenantError,
    AuthenticationError,
    ConfigError,
    InvalidTenantId,
    TenantMismatchError,
    TenantNotFoundError,
    TenantRequiredError,
    TenantSuspendedError,
    TenantUnavailableError,
)
from tenantry.web import Candidate, RequestInfo, ResolverChain, Strength, refusal_for
from tenantry.web.chain import combine
from tenantry.web.middleware import path_matches

HINT, CREDENTIAL = Strength.HINT, Strength.CREDENTIAL


class Fixed:
    """A resolver with a canned answer, recording that it was asked."""

    def __init__(self, name: str, answer: Candidate | Exception | None) -> None:
        self.name = name
        self.answer = answer
        self.asked = 0

    async def resolve(self, request: RequestInfo) -> Candidate | None:
        self.asked += 1
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def test_nothing_named_is_no_tenant() -> None:
    assert combine([]).tenant_id is None


def test_agreeing_candidates_name_the_tenant() -> None:
    got = combine([Candidate("acme", "jwt", CREDENTIAL), Candidate("acme", "host", HINT)])
    assert got.tenant_id == "acme"
    assert got.authenticated
    trusted = combine([Candidate("acme", "host", HINT)], require_credential=False)
    assert trusted.tenant_id == "acme"
    assert not trusted.authenticated


def test_credential_against_a_hint_is_a_mismatch() -> None:
    with pytest.raises(TenantMismatchError):
        combine([Candidate("acme", "jwt", CREDENTIAL), Candidate("globex", "header", HINT)])
    with pytest.raises(TenantMismatchError):
        combine([Candidate("globex", "host", HINT), Candidate("acme", "api_key", CREDENTIAL)])
    with pytest.raises(TenantMismatchError):
        combine([Candidate("acme", "jwt", CREDENTIAL), Candidate("b", "api_key", CREDENTIAL)])


def test_hints_that_disagree_are_ambiguous() -> None:
    with pytest.raises(AmbiguousTenantError):
        combine(
            [Candidate("acme", "host", HINT), Candidate("globex", "header", HINT)],
            require_credential=False,
        )


async def test_chain_asks_every_resolver_in_order() -> None:
    first = Fixed("host", None)
    second = Fixed("header", Candidate("acme", "header", HINT))
    third = Fixed("other", None)
    chain = ResolverChain([first, second, third], require_credential=False)
    got = await chain.resolve(RequestInfo.build())
    assert got.tenant_id == "acme"
    assert (first.asked, second.asked, third.asked) == (1, 1, 1)


async def test_a_raising_resolver_stops_the_chain() -> None:
    bad = Fixed("jwt", AuthenticationError("forged"))
    weaker = Fixed("header", Candidate("acme", "header", HINT))
    with pytest.raises(AuthenticationError):
        await ResolverChain([bad, weaker]).resolve(RequestInfo.build())
    assert weaker.asked == 0


def test_chain_configuration() -> None:
    with pytest.raises(ConfigError):
        ResolverChain([])
    with pytest.raises(ConfigError):
        ResolverChain([Fixed("a", None), Fixed("a", None)])


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (AuthenticationError(), 401, "invalid_credentials"),
        (TenantMismatchError(), 403, "tenant_mismatch"),
        (AmbiguousTenantError(), 400, "ambiguous_tenant"),
        (TenantRequiredError(), 400, "tenant_required"),
        (InvalidTenantId(), 400, "invalid_tenant_id"),
        (TenantNotFoundError(), 404, "tenant_not_found"),
        (TenantSuspendedError(), 403, "tenant_suspended"),
        (TenantUnavailableError(), 503, "tenant_unavailable"),
    ],
)
def test_refusals(exc: Exception, status: int, code: str) -> None:
    refusal = refusal_for(exc, retry_after=12)
    assert refusal is not None
    assert (refusal.status, refusal.code) == (status, code)
    assert json.loads(refusal.body()) == {"error": {"code": code, "message": str(exc)}}
    headers = dict(refusal.headers)
    assert (headers.get("www-authenticate") == "Bearer") is (status == 401)
    assert (headers.get("retry-after") == "12") is (status == 503)


def test_other_errors_are_not_refusals() -> None:
    assert refusal_for(TenantryError("database away")) is None
    assert refusal_for(RuntimeError("bug")) is None


@pytest.mark.parametrize(
    ("path", "matched"),
    [
        ("/health", True),
        ("/health/live", True),
        ("/healthz", False),
        ("/", False),
        ("/x/health", False),
    ],
)
def test_path_rules(path: str, matched: bool) -> None:
    assert path_matches(path, ["/health", "/docs/"]) is matched
