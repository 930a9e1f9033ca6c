"""The sync session dependency: ``def`` endpoints get a Session on the request's tenant."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI, HTTPException
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.middleware import Middleware

from tenantry import Tenantry
from tenantry.web import HeaderResolver, TenantMiddleware
from tenantry.web.fastapi import SyncTenantSessionDep, TenantDep, add_error_handlers
from tests.conftest import TenantryFactory
from tests.integration.web.conftest import seed
from tests.models import Note


class Seen:
    """The sessions the endpoints were given and the threads they ran in."""

    def __init__(self) -> None:
        self.sessions: list[Session] = []
        self.threads: set[int] = set()

    def add(self, session: Session) -> None:
        self.sessions.append(session)
        self.threads.add(threading.get_ident())


def build(t: Tenantry, seen: Seen) -> FastAPI:
    app = FastAPI(
        middleware=[
            Middleware(TenantMiddleware, tenantry=t, resolvers=[HeaderResolver()], trust_hints=True)
        ]
    )
    add_error_handlers(app)

    @app.get("/notes")
    def notes(tenant: TenantDep, session: SyncTenantSessionDep) -> dict[str, object]:
        seen.add(session)
        bodies = list(session.scalars(select(Note.body).order_by(Note.id)))
        return {"tenant": tenant.id, "bodies": bodies}

    @app.post("/notes")
    def add(tenant: TenantDep, session: SyncTenantSessionDep) -> dict[str, str]:
        seen.add(session)
        session.add(Note(body=f"new for {tenant.id}"))
        session.commit()
        return {"ok": tenant.id}

    @app.post("/notes/uncommitted")
    def add_without_commit(session: SyncTenantSessionDep) -> dict[str, bool]:
        seen.add(session)
        session.add(Note(body="never committed"))
        session.flush()
        return {"in_transaction": session.in_transaction()}

    @app.post("/notes/failing")
    def add_then_fail(session: SyncTenantSessionDep) -> dict[str, str]:
        seen.add(session)
        session.add(Note(body="failed request"))
        session.flush()
        raise HTTPException(409, "conflict")

    return app


@pytest.fixture
def seen() -> Seen:
    return Seen()


@pytest.fixture
async def client(make_tenantry: TenantryFactory, seen: Seen) -> AsyncIterator[httpx.AsyncClient]:
    t = make_tenantry("sqlite")
    seed(t, ["acme"], mode="shared")
    seed(t, ["globex"], mode="database")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=build(t, seen)), base_url="http://api.test"
    ) as c:
        yield c
    await t.aclose()


async def _bodies(client: httpx.AsyncClient, tenant: str) -> list[str]:
    response = await client.get("/notes", headers={"X-Tenant-ID": tenant})
    assert response.status_code == 200, response.text
    assert response.json()["tenant"] == tenant
    return list(response.json()["bodies"])


async def test_def_endpoints_see_only_their_tenants_rows(
    client: httpx.AsyncClient, seen: Seen
) -> None:
    tenants = ["acme", "globex"] * 10
    responses = await asyncio.gather(
        *(client.get("/notes", headers={"X-Tenant-ID": tid}) for tid in tenants)
    )
    for tid, response in zip(tenants, responses, strict=True):
        assert response.json() == {"tenant": tid, "bodies": [f"{tid}-{i}" for i in range(3)]}
    assert threading.get_ident() not in seen.threads  # run in worker threads, off the loop
    assert len(set(map(id, seen.sessions))) == len(tenants)  # one session per request


async def test_a_commit_lands_in_the_requests_tenant_only(client: httpx.AsyncClient) -> None:
    response = await client.post("/notes", headers={"X-Tenant-ID": "globex"})
    assert response.json() == {"ok": "globex"}
    assert "new for globex" in await _bodies(client, "globex")
    assert "new for globex" not in await _bodies(client, "acme")


@pytest.mark.parametrize(("path", "status"), [("/notes/uncommitted", 200), ("/notes/failing", 409)])
async def test_the_session_is_closed_after_the_request(
    client: httpx.AsyncClient, seen: Seen, path: str, status: int
) -> None:
    response = await client.post(path, headers={"X-Tenant-ID": "acme"})
    assert response.status_code == status
    if status == 200:
        assert response.json() == {"in_transaction": True}  # open while the endpoint ran
    session = seen.sessions[-1]
    assert not session.in_transaction()  # closed: its transaction rolled back
    assert len(session.identity_map) == 0
    bodies = await _bodies(client, "acme")
    assert bodies == [f"acme-{i}" for i in range(3)]


async def test_without_a_tenant_the_request_is_refused(client: httpx.AsyncClient) -> None:
    response = await client.get("/notes")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "tenant_required"
