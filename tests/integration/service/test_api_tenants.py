"""Tenants and API keys through the admin API, with every error mapped to its status."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tenantry.errors import AuthenticationError, TenantNotFoundError
from tests.conftest import BACKENDS, modes_for
from tests.integration.service.conftest import ServiceFactory, Svc, error_of

pytestmark = pytest.mark.parametrize("backend", BACKENDS)


async def test_tenant_lifecycle(make_service: ServiceFactory, backend: str) -> None:
    svc: Svc = await make_service(backend, run_worker=False)
    for mode in modes_for(backend):
        body = {"id": f"t_{mode}", "name": f"Tenant {mode}", "isolation": mode}
        created = await svc.ok("POST", "/tenants", 201, json=body)
        assert created["status"] == "active"
        assert created["isolation"] == mode
        assert svc.t.get_tenant(f"t_{mode}").isolation.value == mode  # really in the catalog

    shown = await svc.ok("GET", "/tenants/t_shared")
    assert shown["name"] == "Tenant shared"
    patched = await svc.ok(
        "PATCH", "/tenants/t_shared", json={"name": "Renamed", "settings": {"queue": {"weight": 3}}}
    )
    assert patched["name"] == "Renamed"
    assert svc.t.get_tenant("t_shared").settings == {"queue": {"weight": 3}}

    suspended = await svc.ok("POST", "/tenants/t_shared/suspend")
    assert suspended["status"] == "suspended"
    again = await svc.api("POST", "/tenants/t_shared/suspend")
    assert again.status_code == 409
    assert error_of(again)["code"] == "tenant_state"
    listed = await svc.ok("GET", "/tenants", params={"status": "suspended"})
    assert [t["id"] for t in listed["items"]] == ["t_shared"]
    assert (await svc.ok("POST", "/tenants/t_shared/resume"))["status"] == "active"

    deleted = await svc.api("DELETE", "/tenants/t_database")
    assert deleted.status_code == 204
    with pytest.raises(TenantNotFoundError):
        svc.t.get_tenant("t_database")
    gone = await svc.api("GET", "/tenants/t_database")
    assert gone.status_code == 404
    assert error_of(gone)["code"] == "tenant_not_found"


async def test_tenant_list_pagination(make_service: ServiceFactory, backend: str) -> None:
    svc: Svc = await make_service(backend, run_worker=False)
    ids = [f"p{i:02d}" for i in range(7)]
    for tid in reversed(ids):
        svc.t.create_tenant(tid)
    seen: list[str] = []
    for offset in range(0, 9, 3):
        page = await svc.ok("GET", "/tenants", params={"limit": 3, "offset": offset})
        assert page["total"] == 7
        assert page["limit"] == 3
        seen += [t["id"] for t in page["items"]]
    assert seen == ids  # sorted by id, every tenant exactly once
    for params in ({"limit": 0}, {"limit": 501}, {"offset": -1}, {"status": "sleeping"}):
        bad = await svc.api("GET", "/tenants", params=params)
        assert bad.status_code == 422, params
        assert error_of(bad)["code"] == "invalid_request"


async def test_tenant_errors_are_4xx_with_a_code(
    make_service: ServiceFactory, backend: str
) -> None:
    svc: Svc = await make_service(backend, run_worker=False, tenants={"acme": "shared"})
    cases = [
        ({"id": "acme"}, 409, "tenant_exists"),
        ({"id": "pg_catalog"}, 422, "invalid_tenant_id"),
        ({"id": "Bad-Id"}, 422, "invalid_request"),
        ({"id": "x" * 41}, 422, "invalid_request"),
        ({"id": "ok", "store": "nowhere"}, 422, "store_not_found"),
        ({"id": "ok", "isolation": "solitary"}, 422, "invalid_request"),
        ({"id": "ok", "settings": {"queue": {"weight": 0}}}, 422, "invalid_request"),
        ({"id": "ok", "name": "nul\x00byte"}, 422, "invalid_request"),
        ({"id": "ok", "name": "n" * 201}, 422, "invalid_request"),
        ({"id": "ok", "settings": {"k": "nul\x00"}}, 422, "invalid_request"),
        ({"id": "ok", "unknown": 1}, 422, "invalid_request"),
    ]
    if backend == "sqlite":
        cases.append(({"id": "ok", "isolation": "schema"}, 422, "unsupported_isolation"))
    for body, status, code in cases:
        response = await svc.api("POST", "/tenants", json=body)
        assert response.status_code == status, (body, response.text)
        assert error_of(response)["code"] == code, body
    assert [t.id for t in svc.t.list_tenants()] == ["acme"]  # nothing half-made

    not_json = await svc.api(
        "POST", "/tenants", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert not_json.status_code == 422
    for path in ("/tenants/nobody", "/tenants/nobody/api-keys", "/tenants/nobody/stats"):
        response = await svc.api("GET", path)
        assert response.status_code == 404, path
        assert error_of(response)["code"] == "tenant_not_found"
    assert (await svc.api("POST", "/tenants/nobody/resume")).status_code == 404
    assert (await svc.api("DELETE", "/tenants/nobody")).status_code == 404
    bad_path = await svc.api("GET", "/tenants/NotAnId")
    assert bad_path.status_code == 422
    unknown_route = await svc.api("GET", "/nothing-here")
    assert unknown_route.status_code == 404
    assert error_of(unknown_route)["code"] == "not_found"


async def test_api_keys(make_service: ServiceFactory, backend: str) -> None:
    svc: Svc = await make_service(
        backend, run_worker=False, tenants={"acme": "shared", "globex": "shared"}
    )
    issued = await svc.ok("POST", "/tenants/acme/api-keys", 201, json={"name": "ci"})
    key, info = issued["key"], issued["api_key"]
    assert key.startswith(f"tk_{info['id']}_")
    assert svc.t.api_keys.verify(key).tenant_id == "acme"  # a real, working key

    listed = await svc.ok("GET", "/tenants/acme/api-keys")
    assert [k["id"] for k in listed["items"]] == [info["id"]]
    assert key not in str(listed)  # the secret is shown once only
    assert (await svc.ok("GET", "/tenants/globex/api-keys"))["items"] == []

    # Another tenant cannot revoke it, and an unknown id is a 404.
    foreign = await svc.api("DELETE", f"/tenants/globex/api-keys/{info['id']}")
    assert foreign.status_code == 404
    assert error_of(foreign)["code"] == "api_key_not_found"
    assert (await svc.api("DELETE", "/tenants/acme/api-keys/0123456789ab")).status_code == 404
    assert (await svc.api("DELETE", "/tenants/acme/api-keys/not-hex")).status_code == 422

    revoked = await svc.ok("DELETE", f"/tenants/acme/api-keys/{info['id']}")
    assert revoked["revoked_at"] is not None
    with pytest.raises(AuthenticationError):
        svc.t.api_keys.verify(key)
    live = await svc.ok("GET", "/tenants/acme/api-keys", params={"include_revoked": "false"})
    assert live["items"] == []
    too_long = await svc.api("POST", "/tenants/acme/api-keys", json={"name": "n" * 201})
    assert too_long.status_code == 422
    missing = await svc.api("POST", "/tenants/nobody/api-keys", json={})
    assert missing.status_code == 404


async def test_oversized_bodies_are_refused_before_they_are_read(
    make_service: ServiceFactory, backend: str
) -> None:
    svc: Svc = await make_service(backend, run_worker=False)
    huge = {"id": "big", "settings": {"blob": "x" * (2 << 20)}}
    response = await svc.api("POST", "/tenants", json=huge)
    assert response.status_code == 413
    assert error_of(response)["code"] == "payload_too_large"

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"id": "big", "name": "'
        for _ in range(40):
            yield b"x" * 65536
        yield b'"}'

    streamed = await svc.api(
        "POST", "/tenants", content=chunked(), headers={"content-type": "application/json"}
    )
    assert streamed.status_code == 413
    assert error_of(streamed)["code"] == "payload_too_large"
    assert svc.t.list_tenants() == []
    small = await svc.api("POST", "/tenants", json={"id": "small", "name": "n" * 200})
    assert small.status_code == 201
