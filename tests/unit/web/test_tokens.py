"""JWTResolver: only tokens signed with the configured key and algorithm, unexpired."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tenantry.errors import AuthenticationError, ConfigError
from tenantry.web import Candidate, JWTResolver, RequestInfo, Strength

SECRET = "unit-test-secret-0123456789abcdef0123"


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def token(key: Any = SECRET, algorithm: str = "HS256", **claims: Any) -> str:
    claims.setdefault("exp", int(time.time()) + 60)
    claims.setdefault("tenant_id", "acme")
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, key, algorithm=algorithm)


def req(tok: str) -> RequestInfo:
    return RequestInfo.build("/", {"authorization": f"Bearer {tok}"})


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def test_valid_hmac_token() -> None:
    resolver = JWTResolver(SECRET, algorithms=["HS256"])
    got = await resolver.resolve(req(token()))
    assert got == Candidate("acme", "jwt", Strength.CREDENTIAL)


async def test_valid_rsa_token(rsa_key: rsa.RSAPrivateKey) -> None:
    resolver = JWTResolver(public_pem(rsa_key), algorithms=["RS256"])
    got = await resolver.resolve(req(token(rsa_key, "RS256", tenant_id="globex")))
    assert got == Candidate("globex", "jwt", Strength.CREDENTIAL)


async def test_no_bearer_token_or_an_api_key_is_not_this_resolvers_business() -> None:
    resolver = JWTResolver(SECRET, algorithms=["HS256"])
    assert await resolver.resolve(RequestInfo.build("/")) is None
    assert await resolver.resolve(RequestInfo.build("/", {"authorization": "Basic eDp5"})) is None
    assert await resolver.resolve(req("tk_0123456789ab_" + "a" * 43)) is None


# Built when the test runs, not at collection: a token that expired while the
# suite was running would make every case pass for the wrong reason.
BAD_TOKENS: dict[str, Callable[[], str]] = {
    "forged": lambda: token(key="a-different-secret-of-enough-length-0123"),
    "expired": lambda: token(exp=int(time.time()) - 120),
    "no_exp": lambda: token(exp=None),
    "no_tenant_claim": lambda: token(tenant_id=None),
    "hostile_claim": lambda: token(tenant_id="x'; drop table notes"),
    "claim_not_a_string": lambda: token(tenant_id=42),
    "not_yet_valid": lambda: token(nbf=int(time.time()) + 600),
    "unexpected_audience": lambda: token(aud="some-other-service"),
    "garbage": lambda: "not.a.jwt",
    "empty": lambda: "",
    "huge": lambda: "a" * 9000,
}


@pytest.mark.parametrize("case", sorted(BAD_TOKENS))
async def test_bad_tokens_are_authentication_errors(case: str) -> None:
    resolver = JWTResolver(SECRET, algorithms=["HS256"])
    assert await resolver.resolve(req(token()))  # the same resolver takes a good one
    with pytest.raises(AuthenticationError):
        await resolver.resolve(req(BAD_TOKENS[case]()))


async def test_alg_none_is_refused() -> None:
    header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    payload = b64(json.dumps({"tenant_id": "acme", "exp": int(time.time()) + 60}).encode())
    for unsigned in (f"{header}.{payload}.", jwt.encode({"tenant_id": "acme"}, "", "none")):
        with pytest.raises(AuthenticationError):
            await JWTResolver(SECRET, algorithms=["HS256"]).resolve(req(unsigned))


async def test_algorithm_confusion_is_refused(rsa_key: rsa.RSAPrivateKey) -> None:
    """An HS256 token 'signed' with the RSA public key as the HMAC secret."""
    pem = public_pem(rsa_key)
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64(json.dumps({"tenant_id": "acme", "exp": int(time.time()) + 60}).encode())
    signature = hmac.new(pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    forged = f"{header}.{payload}.{b64(signature)}"
    with pytest.raises(AuthenticationError):
        await JWTResolver(pem, algorithms=["RS256"]).resolve(req(forged))
    # ...and the allow-list that would let it through cannot be configured.
    with pytest.raises(ConfigError, match="do not mix"):
        JWTResolver(pem, algorithms=["RS256", "HS256"])


async def test_leeway_absorbs_small_clock_skew() -> None:
    just_expired = token(exp=int(time.time()) - 3)
    assert await JWTResolver(SECRET, algorithms=["HS256"], leeway=10).resolve(req(just_expired))
    with pytest.raises(AuthenticationError, match="expired"):
        await JWTResolver(SECRET, algorithms=["HS256"], leeway=0).resolve(req(just_expired))


async def test_audience_and_issuer_are_checked_and_required() -> None:
    resolver = JWTResolver(SECRET, algorithms=["HS256"], audience="api", issuer="https://idp.test")
    good = token(aud="api", iss="https://idp.test")
    assert await resolver.resolve(req(good))
    for bad in (
        token(aud="other", iss="https://idp.test"),
        token(aud="api", iss="https://evil.test"),
        token(iss="https://idp.test"),
        token(aud="api"),
    ):
        with pytest.raises(AuthenticationError):
            await resolver.resolve(req(bad))


async def test_claim_name_is_configurable() -> None:
    resolver = JWTResolver(SECRET, algorithms=["HS256"], claim="org")
    got = await resolver.resolve(req(token(tenant_id=None, org="initech")))
    assert got is not None
    assert got.tenant_id == "initech"
    with pytest.raises(AuthenticationError):
        await resolver.resolve(req(token()))  # has tenant_id, not org


async def test_two_different_bearer_tokens_are_refused() -> None:
    request = RequestInfo(
        "/", {"authorization": (f"Bearer {token()}", f"Bearer {token(tenant_id='b')}")}
    )
    with pytest.raises(AuthenticationError):
        await JWTResolver(SECRET, algorithms=["HS256"]).resolve(request)


def test_configuration_is_checked(rsa_key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(ConfigError, match="none"):
        JWTResolver(SECRET, algorithms=["HS256", "none"])
    with pytest.raises(ConfigError):
        JWTResolver(SECRET, algorithms=[])
    with pytest.raises(ConfigError, match="list"):
        JWTResolver(SECRET, algorithms="HS256")
    with pytest.raises(ConfigError, match="unknown"):
        JWTResolver(SECRET, algorithms=["HS257"])
    with pytest.raises(ConfigError):
        JWTResolver("short", algorithms=["HS256"])  # too short for HMAC-SHA256
    with pytest.raises(ConfigError):
        JWTResolver(public_pem(rsa_key), algorithms=["HS256"])  # a public key as HMAC secret
    ec_key = ec.generate_private_key(ec.SECP256R1()).public_key()
    with pytest.raises(ConfigError):
        JWTResolver(ec_key, algorithms=["RS256"])
