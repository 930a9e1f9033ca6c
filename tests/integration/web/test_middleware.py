"""The resolver chain end to end: which tenant a request gets, and every refusal."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tenantry.tenancy.catalog import TenantStatus
from tenantry.web import HeaderResolver, TenantMiddleware
from tenantry.web.asgi import Message, Receive, Scope, Send
from tests.integration.web.conftest import (
    TENANTS,
    SQLLog,
    WebFactory,
    bearer,
    make_token,
    set_status,
)


def assert_refused(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]


def assert_served(response: httpx.Response, tenant_id: str) -> None:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["seen"] == [tenant_id] * 3
    assert body["bodies"] == [f"{tenant_id}-{i}" for i in range(3)]
    assert set(body["owners"]) == {tenant_id}
    assert body["state"] == body["scope"] == tenant_id


# -- resolution --------------------------------------------------------------------


async def test_header_names_the_tenant(make_web: WebFactory, backend: str) -> None:
    web = make_web(backend)
    for tid in TENANTS:
        assert_served(await web.get("/notes", headers={"X-Tenant-ID": tid}), tid)


async def test_subdomain_and_mapped_host_name_the_tenant(make_web: WebFactory) -> None:
    web = make_web("sqlite")
    assert_served(await web.get("http://globex.example.com/notes"), "globex")
    assert_served(await web.get("http://GLOBEX.Example.COM:8443/notes"), "globex")
    assert_served(await web.get("http://shop.acme.test/notes"), "acme")


async def test_jwt_names_the_tenant(make_web: WebFactory) -> None:
    web = make_web("sqlite")
    assert_served(await web.get("/notes", headers=bearer(make_token("initech"))), "initech")


async def test_credential_and_agreeing_hints_are_served(make_web: WebFactory) -> None:
    web = make_web("sqlite")
    headers = {**bearer(make_token("acme")), "X-Tenant-ID": "acme"}
    assert_served(await web.get("http://acme.example.com/notes", headers=headers), "acme")


# -- bad credentials: 401, never a fall-through to a weaker resolver -------------------


async def test_forged_jwt_is_refused_even_with_a_valid_header(make_web: WebFactory) -> None:
    web = make_web("sqlite")
    forged = make_token("acme", key="another-secret-of-enough-length-0123456789")
    for headers in (bearer(forged), {**bearer(forged), "X-Tenant-ID": "acme"}):
        response = await web.get("http://acme.example.com/notes", headers=headers)
        assert_refused(response, 401, "invalid_credentials")
        assert response.headers["www-authenticate"] == "Bearer"


async def test_unsigned_alg_none_jwt_is_refused(make_web: WebFactory) -> None:
    web = make_web("sqlite")
    unsigned = make_token("acme", key=None, algorithm="none")
    assert unsigned.endswith(".")  # really unsigned
    response = await web.get("/notes", headers={**bearer(unsigned), "X-Tenant-ID": "acme"})
    assert_refused(response, 401, "invalid_credentials")


async def test_expired_jwt_is_refused(make_web: WebFactory) -> None:
    web = make_web("sqlite")
    expired = make_token("acme", expires_in=-120)
    response = await web.get("/notes", headers={**bearer(expired), "X-Tenant-ID": "acme"})
    assert_refused(response, 401, "invalid_credentials")
    assert "expired" in response.json()["error"]["message"]


async def test_jwt_without_tenant_claim_is_refused(make_web: WebFactory) -> None:
    web = make_web("sqlite")
    response = await web.get("/notes", headers={**bearer(make_token(None)), "X-Tenant-ID": "acme"})
    assert_refused(response, 401, "invalid_credentials")


async def test_bad_credential_is_refused_on_a_tenant_optional_path(make_web: WebFactory) -> None:
    web = make_web("sqlite")
    forged = make_token("acme", key="another-secret-of-enough-length-0123456789")
    assert_refused(await web.get("/public", headers=bearer(forged)), 401, "invalid_credentials")


# -- disagreement ---------------------------------------------------------------------


async def test_jwt_for_one_tenant_with_header_for_another_is_forbidden(
    make_web: WebFactory,
) -> None:
    web = make_web("sqlite")
    headers = {**bearer(make_token("acme")), "X-Tenant-ID": "globex"}
    assert_refused(await web.get("/notes", headers=headers), 403, "tenant_mismatch")


async def test_jwt_for_one_tenant_on_another_tenants_host_is_forbidden(
    make_web: WebFactory,
) -> None:
    web = make_web("sqlite")
    response = await web.get("http://globex.example.com/notes", headers=bearer(make_token("acme")))
    assert_refused(response, 403, "tenant_mismatch")


async def test_hints_that_disagree_are_ambiguous(make_web: WebFactory) -> None:
    web = make_web("sqlite")
    response = await web.get("http://acme.example.com/notes", headers={"X-Tenant-ID": "globex"})
    assert_refused(response, 400, "ambiguous_tenant")
    twice = [("X-Tenant-ID", "acme"), ("X-Tenant-ID", "globex")]
    assert_refused(await web.get("/notes", headers=twice), 400, "ambiguous_tenant")


# -- the tenant itself -----------------------------------------------------------------


async def test_unknown_tenant_is_not_found(make_web: WebFactory, backend: str) -> None:
    web = make_web(backend)
    assert_refused(
        await web.get("/notes", headers={"X-Tenant-ID": "nobody"}), 404, "tenant_not_found"
    )
    response = await web.get("/notes", headers=bearer(make_token("nobody")))
    assert_refused(response, 404, "tenant_not_found")


async def test_host_under_a_base_domain_naming_no_tenant_is_not_found(
    make_web: WebFactory,
) -> None:
    web = make_web("sqlite")
    for host in ("nobody.example.com", "my-co.example.com", "a.b.example.com"):
        assert_refused(await web.get(f"http://{host}/notes"), 404, "tenant_not_found")


async def test_host_outside_the_base_domains_names_no_tenant(make_web: WebFactory) -> None:
    web = make_web("sqlite")
    for host in ("elsewhere.test", "example.com", "www.example.com"):
        assert_refused(await web.get(f"http://{host}/notes"), 400, "tenant_required")
    # ...so it does not stand in the way of a header.
    assert_served(
        await web.get("http://elsewhere.test/notes", headers={"X-Tenant-ID": "acme"}), "acme"
    )


async def test_suspended_tenant_is_forbidden(make_web: WebFactory, backend: str) -> None:
    web = make_web(backend)
    web.t.suspend_tenant("globex")
    response = await web.get("/notes", headers=bearer(make_token("globex")))
    assert_refused(response, 403, "tenant_suspended")
    web.t.resume_tenant("globex")
    assert_served(await web.get("/notes", headers=bearer(make_token("globex"))), "globex")


@pytest.mark.parametrize(
    "status",
    [
        TenantStatus.PROVISIONING,
        TenantStatus.DELETING,
        TenantStatus.MIGRATING,
        TenantStatus.MOVING,
    ],
)
async def test_unavailable_tenant_is_503_with_retry_after(
    make_web: WebFactory, status: TenantStatus
) -> None:
    web = make_web("sqlite", retry_after=7)
    set_status(web.t, "acme", status)
    response = await web.get("/notes", headers={"X-Tenant-ID": "acme"})
    assert_refused(response, 503, "tenant_unavailable")
    assert response.headers["retry-after"] == "7"


async def test_no_tenant_is_a_bad_request(make_web: WebFactory) -> None:
    web = make_web("sqlite")
    assert_refused(await web.get("/notes"), 400, "tenant_required")


@pytest.mark.parametrize(
    "hostile",
    ["x'; drop table notes; --", "ACME", "acme\n", "pg_catalog", "../acme", "a" * 41, ""],
)
async def test_hostile_tenant_id_is_refused_before_any_sql(
    make_web: WebFactory, sql_log: SQLLog, hostile: str
) -> None:
    web = make_web("sqlite", ttl=0)
    # The log does see the catalog's SQL: a valid request reads it.
    sql_log.statements.clear()
    assert_served(await web.get("/notes", headers={"X-Tenant-ID": "acme"}), "acme")
    assert any("tenantry_tenants" in s for s in sql_log.statements)
    sql_log.statements.clear()
    response = await web.get("/notes", headers={"X-Tenant-ID": hostile})
    assert_refused(response, 400, "invalid_tenant_id")
    assert sql_log.statements == []


async def test_hostile_jwt_claim_is_refused_before_any_sql(
    make_web: WebFactory, sql_log: SQLLog
) -> None:
    web = make_web("sqlite", ttl=0)
    sql_log.statements.clear()
    response = await web.get("/notes", headers=bearer(make_token("x'; drop table notes")))
    assert_refused(response, 401, "invalid_credentials")
    assert sql_log.statements == []


# -- excluded and optional paths -----------------------------------------------------------


async def test_excluded_path_bypasses_resolution(make_web: WebFactory) -> None:
    web = make_web("sqlite")
    for headers in ({}, {"X-Tenant-ID": "x'; drop"}, bearer("garbage")):
        response = await web.get("/health", headers=headers)
        assert response.status_code == 200
        assert response.text == "ok None"
    # "/health" does not exclude "/healthz"-like paths.
    assert_refused(await web.get("/healthz"), 400, "tenant_required")


async def test_optional_path_runs_without_a_tenant_or_with_a_checked_one(
    make_web: WebFactory,
) -> None:
    web = make_web("sqlite")
    response = await web.get("/public")
    assert response.json() == {"context": None, "state": None}
    response = await web.get("/public", headers={"X-Tenant-ID": "acme"})
    assert response.json() == {"context": "acme", "state": "acme"}
    assert_refused(
        await web.get("/public", headers={"X-Tenant-ID": "nobody"}), 404, "tenant_not_found"
    )
    web.t.suspend_tenant("acme")
    assert_refused(
        await web.get("/public", headers={"X-Tenant-ID": "acme"}), 403, "tenant_suspended"
    )


async def test_lifespan_passes_through_untouched(make_web: WebFactory) -> None:
    web = make_web("sqlite")
    seen: list[dict[str, Any]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(dict(scope))

    middleware = TenantMiddleware(app, web.t, [HeaderResolver()], trust_hints=True)

    async def receive() -> Message:
        return {"type": "lifespan.startup"}

    async def send(message: Message) -> None:
        pass

    await middleware({"type": "lifespan", "state": {}}, receive, send)
    assert seen == [{"type": "lifespan", "state": {}}]
