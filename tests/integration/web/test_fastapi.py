"""FastAPI: the dependencies read what the middleware checked; refusals keep their shape."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select
from starlette.middleware import Middleware

from tenantry import Tenantry, current_tenant
from tenantry.web import HeaderResolver, TenantMiddleware
from tenantry.web.fastapi import TenantDep, TenantSessionDep, add_error_handlers
from tests.conftest import TenantryFactory
from tests.integration.web.conftest import seed
from tests.integration.web.test_middleware import assert_refused
from tests.models import Note


def build(t: Tenantry) -> FastAPI:
    app = FastAPI(
        middleware=[
            Middleware(
                TenantMiddleware,
                tenantry=t,
                resolvers=[HeaderResolver()],
                trust_hints=True,
                optional_paths=["/optional"],
            )
        ]
    )
    add_error_handlers(app)

    @app.get("/notes")
    async def notes(tenant: TenantDep, session: TenantSessionDep) -> dict[str, object]:
        await asyncio.sleep(0)
        bodies = list(await session.scalars(select(Note.body).order_by(Note.id)))
        return {"tenant": tenant.id, "context": current_tenant(), "bodies": bodies}

    @app.get("/optional")
    async def optional(tenant: TenantDep) -> dict[str, str]:
        return {"tenant": tenant.id}

    @app.get("/sync")
    def sync_route(tenant: TenantDep) -> dict[str, str]:  # FastAPI runs it in a thread
        return {"tenant": tenant.id, "context": current_tenant()}

    @app.post("/notes")
    async def add(tenant: TenantDep, session: TenantSessionDep) -> dict[str, str]:
        session.add(Note(body=f"new for {tenant.id}"))
        await session.commit()
        return {"ok": tenant.id}

    @app.get("/suspend-then-read")
    async def suspend_then_read(tenant: TenantDep) -> dict[str, str]:
        await asyncio.to_thread(t.suspend_tenant, tenant.id)
        async with t.async_session():  # refused: the tenant is suspended now
            pass
        return {}  # pragma: no cover

    return app


@pytest.fixture
async def client(make_tenantry: TenantryFactory, backend: str) -> AsyncIterator[httpx.AsyncClient]:
    t = make_tenantry(backend)
    seed(t, ["acme", "globex"])
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=build(t)), base_url="http://api.test"
    ) as c:
        yield c
    await t.aclose()


async def test_dependencies_give_the_tenant_and_its_session(client: httpx.AsyncClient) -> None:
    responses = await asyncio.gather(
        *(client.get("/notes", headers={"X-Tenant-ID": tid}) for tid in ["acme", "globex"] * 10)
    )
    for tid, response in zip(["acme", "globex"] * 10, responses, strict=True):
        assert response.json() == {
            "tenant": tid,
            "context": tid,
            "bodies": [f"{tid}-{i}" for i in range(3)],
        }
    response = await client.get("/sync", headers={"X-Tenant-ID": "globex"})
    assert response.json() == {"tenant": "globex", "context": "globex"}
    assert (await client.post("/notes", headers={"X-Tenant-ID": "acme"})).json() == {"ok": "acme"}
    acme = (await client.get("/notes", headers={"X-Tenant-ID": "acme"})).json()["bodies"]
    globex = (await client.get("/notes", headers={"X-Tenant-ID": "globex"})).json()["bodies"]
    assert "new for acme" in acme
    assert "new for acme" not in globex


async def test_refusals_from_the_middleware_and_from_routes_share_one_shape(
    client: httpx.AsyncClient,
) -> None:
    assert_refused(await client.get("/notes"), 400, "tenant_required")
    assert_refused(await client.get("/optional"), 400, "tenant_required")  # raised by TenantDep
    ok = await client.get("/optional", headers={"X-Tenant-ID": "acme"})
    assert ok.json() == {"tenant": "acme"}
    response = await client.get("/suspend-then-read", headers={"X-Tenant-ID": "globex"})
    assert_refused(response, 403, "tenant_suspended")  # raised by the session, mid-request
