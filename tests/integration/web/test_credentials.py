"""The default chain: only a credential gives a request a tenant; hints merely choose.

Built without ``trust_hints`` (unlike most web tests), so these requests meet
the middleware exactly as a default-configured application's would.
"""

from __future__ import annotations

import logging

import pytest

from tenantry.errors import ConfigError
from tenantry.web import (
    HeaderResolver,
    HostResolver,
    JWTResolver,
    Resolver,
    TenantMiddleware,
)
from tenantry.web.asgi import Receive, Scope, Send
from tests.integration.web.conftest import (
    JWT_SECRET,
    WebFactory,
    bearer,
    default_resolvers,
    make_token,
)
from tests.integration.web.test_middleware import assert_refused, assert_served

ACME_HOST = "http://acme.example.com"


def multi_tenant_resolvers(t: object) -> list[Resolver]:
    return [
        JWTResolver(JWT_SECRET, algorithms=["HS256"], tenants_claim="tenants"),
        HostResolver(["example.com"]),
        HeaderResolver(),
    ]


async def test_hints_alone_are_refused_by_default(make_web: WebFactory, backend: str) -> None:
    web = make_web(backend, trust_hints=False)
    for url, headers in (
        ("/notes", {"X-Tenant-ID": "acme"}),
        (f"{ACME_HOST}/notes", {}),
        ("http://shop.acme.test/notes", {}),
        (f"{ACME_HOST}/notes", {"X-Tenant-ID": "acme"}),
    ):
        response = await web.get(url, headers=headers)
        assert_refused(response, 401, "credential_required")
        assert response.headers["www-authenticate"] == "Bearer"


async def test_a_hint_alone_is_refused_on_optional_paths_too(make_web: WebFactory) -> None:
    web = make_web("sqlite", trust_hints=False)
    assert_refused(
        await web.get("/public", headers={"X-Tenant-ID": "acme"}), 401, "credential_required"
    )
    # Naming nothing there is still allowed.
    response = await web.get("/public")
    assert response.status_code == 200
    assert response.json() == {"context": None, "state": None}


async def test_hints_alone_are_served_with_trust_hints(
    make_web: WebFactory, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="tenantry"):
        web = make_web("sqlite", trust_hints=True)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "any client can choose a tenant" in warnings[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tenantry"):
        assert_served(await web.get("/notes", headers={"X-Tenant-ID": "acme"}), "acme")
        assert_served(await web.get("http://globex.example.com/notes"), "globex")
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


async def test_jwt_with_a_matching_header_is_served(make_web: WebFactory, backend: str) -> None:
    web = make_web(backend, trust_hints=False)
    token = bearer(make_token("acme"))
    assert_served(await web.get("/notes", headers=token), "acme")
    assert_served(await web.get("/notes", headers={**token, "X-Tenant-ID": "acme"}), "acme")
    assert_served(await web.get(f"{ACME_HOST}/notes", headers=token), "acme")


async def test_jwt_with_another_tenants_header_or_host_is_forbidden(make_web: WebFactory) -> None:
    web = make_web("sqlite", trust_hints=False)
    token = bearer(make_token("acme"))
    for url, headers in (
        ("/notes", {**token, "X-Tenant-ID": "globex"}),
        ("http://globex.example.com/notes", token),
    ):
        assert_refused(await web.get(url, headers=headers), 403, "tenant_mismatch")


async def test_api_key_alone_is_served(make_web: WebFactory, backend: str) -> None:
    web = make_web(backend, trust_hints=False)
    key = web.t.api_keys.issue("globex", name="ci").key
    assert_served(await web.get("/notes", headers={"X-API-Key": key}), "globex")
    assert_served(await web.get("/notes", headers=bearer(key)), "globex")
    both = {**bearer(key), "X-Tenant-ID": "acme"}
    assert_refused(await web.get("/notes", headers=both), 403, "tenant_mismatch")


async def test_multi_tenant_jwt_is_steered_by_the_header_or_host(
    make_web: WebFactory, backend: str
) -> None:
    web = make_web(backend, resolvers=multi_tenant_resolvers, trust_hints=False)
    token = bearer(make_token(None, tenants=["acme", "globex"]))
    assert_served(await web.get("/notes", headers={**token, "X-Tenant-ID": "acme"}), "acme")
    assert_served(await web.get("/notes", headers={**token, "X-Tenant-ID": "globex"}), "globex")
    assert_served(await web.get("http://globex.example.com/notes", headers=token), "globex")


async def test_multi_tenant_jwt_refuses_other_tenants_and_a_missing_choice(
    make_web: WebFactory,
) -> None:
    web = make_web("sqlite", resolvers=multi_tenant_resolvers, trust_hints=False)
    token = bearer(make_token(None, tenants=["acme", "globex"]))
    outside = await web.get("/notes", headers={**token, "X-Tenant-ID": "initech"})
    assert_refused(outside, 403, "tenant_mismatch")
    unchosen = await web.get("/notes", headers=token)
    assert_refused(unchosen, 400, "tenant_required")
    assert "2 tenants" in unchosen.json()["error"]["message"]
    split = await web.get(f"{ACME_HOST}/notes", headers={**token, "X-Tenant-ID": "globex"})
    assert_refused(split, 400, "ambiguous_tenant")
    # A token listing a single tenant needs no choice.
    alone = bearer(make_token(None, tenants=["initech"]))
    assert_served(await web.get("/notes", headers=alone), "initech")


async def test_multi_tenant_jwt_on_an_optional_path_runs_without_a_tenant(
    make_web: WebFactory,
) -> None:
    web = make_web("sqlite", resolvers=multi_tenant_resolvers, trust_hints=False)
    token = bearer(make_token(None, tenants=["acme", "globex"]))
    response = await web.get("/public", headers=token)
    assert response.status_code == 200
    assert response.json() == {"context": None, "state": None}


async def test_a_chain_of_hints_only_is_a_configuration_error(make_web: WebFactory) -> None:
    web = make_web("sqlite")

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise AssertionError("never called")

    with pytest.raises(ConfigError, match="trust_hints"):
        TenantMiddleware(app, web.t, [HostResolver(["example.com"]), HeaderResolver()])
    # A credential resolver anywhere in the chain makes it servable.
    TenantMiddleware(app, web.t, default_resolvers(web.t))
