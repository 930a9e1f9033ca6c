"""Host and header resolvers, and the request view they read."""

from __future__ import annotations

import pytest

from tenantry.errors import AmbiguousTenantError, ConfigError, InvalidTenantId, TenantNotFoundError
from tenantry.web import Candidate, HeaderResolver, HostResolver, RequestInfo, Strength
from tenantry.web.resolvers import normalize_host


def req(headers: dict[str, str] | None = None, path: str = "/") -> RequestInfo:
    return RequestInfo.build(path, headers)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("acme.example.com", "acme.example.com"),
        ("ACME.Example.COM", "acme.example.com"),
        ("acme.example.com:8443", "acme.example.com"),
        ("acme.example.com.", "acme.example.com"),
        ("[::1]:8000", None),
        ("acme.example.com:http", None),
        ("acme example.com", None),
        ("acme.example.com\r\nx: y", None),
        ("", None),
        (None, None),
    ],
)
def test_normalize_host(raw: str | None, expected: str | None) -> None:
    assert normalize_host(raw) == expected


async def test_host_subdomain_and_mapping() -> None:
    resolver = HostResolver(["example.com", "eu.example.com"], hosts={"Shop.Acme.Test": "acme"})
    hint = Strength.HINT
    assert await resolver.resolve(req({"host": "acme.example.com"})) == Candidate(
        "acme", "host", hint
    )
    # The longest base domain wins: "acme.eu.example.com" is acme on eu, not "acme.eu".
    got = await resolver.resolve(req({"host": "acme.eu.example.com"}))
    assert got == Candidate("acme", "host", hint)
    assert await resolver.resolve(req({"host": "shop.acme.test:443"})) == Candidate(
        "acme", "host", hint
    )


@pytest.mark.parametrize("host", ["example.com", "www.example.com", "other.test", "[::1]", ""])
async def test_hosts_that_name_no_tenant(host: str) -> None:
    resolver = HostResolver(["example.com"])
    assert await resolver.resolve(req({"host": host})) is None


async def test_no_host_header_names_no_tenant() -> None:
    assert await HostResolver(["example.com"]).resolve(req()) is None


@pytest.mark.parametrize("host", ["my-co.example.com", "a.b.example.com", "pg_x.example.com"])
async def test_host_under_a_base_domain_that_is_no_tenant_id_is_unknown(host: str) -> None:
    with pytest.raises(TenantNotFoundError):
        await HostResolver(["example.com"]).resolve(req({"host": host}))


def test_host_resolver_configuration_is_checked() -> None:
    with pytest.raises(ConfigError):
        HostResolver()
    with pytest.raises(ConfigError):
        HostResolver(["exa mple.com"])
    with pytest.raises(InvalidTenantId):
        HostResolver(hosts={"shop.test": "Not Valid"})


async def test_header_resolver() -> None:
    resolver = HeaderResolver()
    assert await resolver.resolve(req()) is None
    got = await resolver.resolve(req({"x-tenant-id": "acme"}))
    assert got == Candidate("acme", "header", Strength.HINT)
    custom = HeaderResolver("X-Org", name="org")
    assert await custom.resolve(req({"X-ORG": "acme"})) == Candidate("acme", "org", Strength.HINT)


@pytest.mark.parametrize("value", ["x'; drop table notes; --", "Acme", " acme", "acme\n", ""])
async def test_header_resolver_refuses_invalid_ids(value: str) -> None:
    with pytest.raises(InvalidTenantId):
        await HeaderResolver().resolve(req({"x-tenant-id": value}))


async def test_repeated_header_must_agree() -> None:
    same = RequestInfo("/", {"x-tenant-id": ("acme", "acme")})
    assert await HeaderResolver().resolve(same) == Candidate("acme", "header", Strength.HINT)
    different = RequestInfo("/", {"x-tenant-id": ("acme", "globex")})
    with pytest.raises(AmbiguousTenantError):
        await HeaderResolver().resolve(different)


def test_request_info_from_scope_keeps_repeated_headers() -> None:
    scope = {
        "type": "http",
        "path": "/notes",
        "headers": [
            (b"Host", b"acme.example.com"),
            (b"x-tenant-id", b"acme"),
            (b"X-Tenant-ID", b"globex"),
            (b"authorization", b"Bearer  abc "),
            (b"authorization", b"Basic xyz"),
        ],
    }
    info = RequestInfo.from_scope(scope)
    assert info.path == "/notes"
    assert info.host == "acme.example.com"
    assert info.header_values("X-Tenant-Id") == ("acme", "globex")
    assert info.bearer_tokens() == ("abc",)
    # Two Host headers are no host at all.
    assert RequestInfo("/", {"host": ("a.example.com", "b.example.com")}).host is None
