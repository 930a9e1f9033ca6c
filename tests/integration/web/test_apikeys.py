"""API keys: issued once, stored as hashes, refused when revoked or unknown."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from tenantry import TenantryError
from tenantry.errors import ApiKeyNotFoundError, AuthenticationError, TenantNotFoundError
from tenantry.tenancy.catalog import api_keys_table
from tenantry.web import ApiKeys
from tests.conftest import TenantryFactory, make_config
from tests.integration.web.conftest import SQLLog, WebFactory, bearer, seed
from tests.integration.web.test_middleware import assert_refused, assert_served


async def test_key_resolves_its_tenant_by_either_header(make_web: WebFactory, backend: str) -> None:
    web = make_web(backend)
    issued = web.t.api_keys.issue("globex", name="ci")
    assert issued.key.startswith(f"tk_{issued.info.id}_")
    assert issued.key not in repr(issued)
    assert_served(await web.get("/notes", headers={"X-API-Key": issued.key}), "globex")
    assert_served(await web.get("/notes", headers=bearer(issued.key)), "globex")


async def test_only_a_hash_is_stored(make_web: WebFactory, backend: str) -> None:
    web = make_web(backend)
    issued = web.t.api_keys.issue("acme", name="deploy")
    with web.t.catalog.engine.connect() as conn:
        row = conn.execute(select(api_keys_table)).mappings().one()
    # The secret is URL-safe base64, which may itself hold "_": cut at the id, not the last "_".
    secret = issued.key.removeprefix(f"tk_{issued.info.id}_")
    assert len(secret) == 43
    assert all(secret not in str(value) for value in row.values())
    assert row["id"] == issued.info.id
    assert len(row["secret_hash"]) == 64
    listed = web.t.api_keys.list("acme")
    assert [k.id for k in listed] == [issued.info.id]
    assert listed[0].name == "deploy"
    assert all(secret not in str(value) for value in listed[0].to_dict().values())


async def test_revoked_key_is_refused(make_web: WebFactory, backend: str) -> None:
    web = make_web(backend)
    issued = web.t.api_keys.issue("acme")
    assert_served(await web.get("/notes", headers={"X-API-Key": issued.key}), "acme")  # cached now
    revoked = web.t.api_keys.revoke(issued.info.id)
    assert revoked.is_revoked
    response = await web.get("/notes", headers={"X-API-Key": issued.key, "X-Tenant-ID": "acme"})
    assert_refused(response, 401, "invalid_credentials")
    assert "revoked" in response.json()["error"]["message"]
    assert web.t.api_keys.revoke(issued.info.id).revoked_at == revoked.revoked_at  # idempotent
    assert web.t.api_keys.list("acme", include_revoked=False) == []


async def test_unknown_and_malformed_keys_are_refused(
    make_web: WebFactory, sql_log: SQLLog
) -> None:
    web = make_web("sqlite")
    real = web.t.api_keys.issue("acme").key
    key_id = real.split("_")[1]
    wrong_secret = f"tk_{key_id}_{'A' * 43}"
    unknown_id = f"tk_{'0' * 12}_{real.rsplit('_', 1)[1]}"
    for key in (wrong_secret, unknown_id):
        response = await web.get("/notes", headers={"X-API-Key": key, "X-Tenant-ID": "acme"})
        assert_refused(response, 401, "invalid_credentials")
    sql_log.statements.clear()
    for key in ("tk_'; drop table tenantry_api_keys; --", "tk_", "not-a-key", real + "x"):
        response = await web.get("/notes", headers={"X-API-Key": key, "X-Tenant-ID": "acme"})
        assert_refused(response, 401, "invalid_credentials")
    assert sql_log.statements == []  # malformed keys never reach SQL


async def test_two_different_keys_are_refused(make_web: WebFactory) -> None:
    web = make_web("sqlite")
    first, second = (web.t.api_keys.issue("acme").key for _ in range(2))
    response = await web.get("/notes", headers={"X-API-Key": first, **bearer(second)})
    assert_refused(response, 401, "invalid_credentials")


async def test_key_of_one_tenant_with_a_hint_for_another_is_forbidden(make_web: WebFactory) -> None:
    web = make_web("sqlite")
    key = web.t.api_keys.issue("acme").key
    response = await web.get("http://globex.example.com/notes", headers={"X-API-Key": key})
    assert_refused(response, 403, "tenant_mismatch")


async def test_suspended_tenants_key_is_forbidden(make_web: WebFactory) -> None:
    web = make_web("sqlite")
    key = web.t.api_keys.issue("acme").key
    web.t.suspend_tenant("acme")
    assert_refused(await web.get("/notes", headers={"X-API-Key": key}), 403, "tenant_suspended")


def test_keys_die_with_their_tenant(make_tenantry: TenantryFactory, backend: str) -> None:
    t = make_tenantry(backend)
    seed(t, ["acme"])
    issued = t.api_keys.issue("acme")
    t.delete_tenant("acme")
    with pytest.raises(AuthenticationError):
        ApiKeys(t.catalog).verify(issued.key)  # a fresh cache: what the database says
    seed(t, ["acme"])  # the same id again must not inherit the old key
    assert t.api_keys.list() == []
    with pytest.raises(AuthenticationError):
        ApiKeys(t.catalog).verify(issued.key)


def test_issue_needs_an_existing_tenant(make_tenantry: TenantryFactory) -> None:
    t = make_tenantry("sqlite")
    t.setup()
    with pytest.raises(TenantNotFoundError):
        t.api_keys.issue("nobody")
    seed(t, ["acme"])
    with pytest.raises(TenantryError, match="200"):
        t.api_keys.issue("acme", name="x" * 201)
    assert t.api_keys.list() == []


def test_tenant_scoped_revoke_cannot_touch_another_tenants_key(
    make_tenantry: TenantryFactory, backend: str
) -> None:
    t = make_tenantry(backend)
    seed(t, ["acme", "globex"])
    acme_key = t.api_keys.issue("acme")
    with pytest.raises(ApiKeyNotFoundError):
        t.api_keys.revoke(acme_key.info.id, tenant_id="globex")
    assert t.api_keys.verify(acme_key.key).tenant_id == "acme"
    t.api_keys.revoke(acme_key.info.id, tenant_id="acme")
    with pytest.raises(AuthenticationError, match="revoked"):
        t.api_keys.verify(acme_key.key)
    with pytest.raises(ApiKeyNotFoundError):
        t.api_keys.revoke("0" * 12)


def test_revocation_elsewhere_takes_effect_within_the_ttl(
    make_tenantry: TenantryFactory, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    config = make_config("sqlite", request, tmp_path)
    admin = make_tenantry("sqlite", config)
    seed(admin, ["acme"])
    now = [1000.0]
    server = ApiKeys(make_tenantry("sqlite", config).catalog, ttl=5.0, clock=lambda: now[0])
    issued = admin.api_keys.issue("acme")
    assert server.verify(issued.key).tenant_id == "acme"
    admin.api_keys.revoke(issued.info.id)  # another process, as far as *server* knows
    assert server.verify(issued.key).tenant_id == "acme"  # still cached
    now[0] += 5.0
    with pytest.raises(AuthenticationError, match="revoked"):
        server.verify(issued.key)


def test_last_use_is_recorded_at_most_once_per_interval(make_tenantry: TenantryFactory) -> None:
    t = make_tenantry("sqlite")
    seed(t, ["acme"])
    issued = t.api_keys.issue("acme")
    assert issued.info.last_used_at is None
    keys = ApiKeys(t.catalog, ttl=0, touch_interval=3600)
    first = keys.verify(issued.key).last_used_at
    assert first is not None
    assert keys.verify(issued.key).last_used_at == first  # not rewritten within the interval
    assert t.api_keys.get(issued.info.id).last_used_at == first
    eager = ApiKeys(t.catalog, ttl=0, touch_interval=0)
    later = eager.verify(issued.key).last_used_at
    assert later is not None
    assert later > first
