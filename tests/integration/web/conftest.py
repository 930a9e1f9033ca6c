"""A Starlette app behind TenantMiddleware, on a real catalog (SQLite or PostgreSQL)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from sqlalchemy import event, select
from sqlalchemy.engine import Engine
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from tenantry import Tenantry, current_tenant, current_tenant_or_none
from tenantry.tenancy.catalog import TenantStatus
from tenantry.web import (
    APIKeyResolver,
    HeaderResolver,
    HostResolver,
    JWTResolver,
    Resolver,
    TenantMiddleware,
)
from tests.conftest import TenantryFactory, make_config
from tests.models import Note

JWT_SECRET = "s3cret-for-tests-only-0123456789abcdef"  # 37 bytes: long enough for HS256
TENANTS = ("acme", "globex", "initech")


def make_token(
    tenant_id: str | None,
    *,
    key: Any = JWT_SECRET,
    algorithm: str = "HS256",
    expires_in: float = 300,
    **claims: Any,
) -> str:
    payload: dict[str, Any] = {"exp": int(time.time() + expires_in), **claims}
    if tenant_id is not None:
        payload["tenant_id"] = tenant_id
    return jwt.encode(payload, key, algorithm=algorithm)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Probe:
    """What the app saw: the background task's tenant, and so on."""

    background: list[str | None] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0


def build_app(t: Tenantry, probe: Probe) -> Starlette:
    async def notes(request: Request) -> Response:
        probe.in_flight += 1
        probe.max_in_flight = max(probe.max_in_flight, probe.in_flight)
        try:
            seen = [current_tenant()]
            await asyncio.sleep(0)
            async with t.async_session() as session:
                bodies = list(await session.scalars(select(Note.body).order_by(Note.id)))
                await asyncio.sleep(0)
                seen.append(current_tenant())
                owners = list(await session.scalars(select(Note.tenant_id)))
            await asyncio.sleep(0)
            seen.append(current_tenant())
        finally:
            probe.in_flight -= 1
        return JSONResponse(
            {
                "seen": seen,
                "bodies": bodies,
                "owners": owners,
                "state": request.state.tenant.id,
                "scope": request.scope["tenantry.tenant"].id,
            }
        )

    async def public(request: Request) -> Response:
        tenant = request.state.tenant
        return JSONResponse(
            {"context": current_tenant_or_none(), "state": tenant.id if tenant else None}
        )

    async def health(request: Request) -> Response:
        return PlainTextResponse(f"ok {current_tenant_or_none()}")

    async def stream(request: Request) -> Response:
        async def chunks() -> AsyncIterator[str]:
            for i in range(3):
                await asyncio.sleep(0)
                async with t.async_session() as session:
                    count = len(list(await session.scalars(select(Note.id))))
                yield f"{i}:{current_tenant()}:{count}\n"

        return StreamingResponse(chunks(), media_type="text/plain")

    async def background(request: Request) -> Response:
        async def record() -> None:
            await asyncio.sleep(0)
            probe.background.append(current_tenant_or_none())
            async with t.async_session() as session:
                session.add(Note(body="from background"))
                await session.commit()

        return PlainTextResponse("accepted", background=BackgroundTask(record))

    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text(current_tenant())
        await websocket.close()

    return Starlette(
        routes=[
            Route("/notes", notes),
            Route("/public", public),
            Route("/health", health),
            Route("/stream", stream),
            Route("/background", background),
            WebSocketRoute("/ws", ws),
        ]
    )


def default_resolvers(t: Tenantry) -> list[Resolver]:
    return [
        JWTResolver(JWT_SECRET, algorithms=["HS256"]),
        APIKeyResolver(t.api_keys),
        HostResolver(["example.com"], hosts={"shop.acme.test": "acme"}),
        HeaderResolver(),
    ]


@dataclass
class Web:
    """One tenantry, its app behind the middleware, and an httpx client for it."""

    t: Tenantry
    app: TenantMiddleware
    probe: Probe
    client: httpx.AsyncClient

    async def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.client.get(path, **kwargs)


WebFactory = Callable[..., Web]


def seed(t: Tenantry, tenants: Sequence[str] = TENANTS, *, mode: str = "shared") -> None:
    from tenantry import tenant_context

    for tid in tenants:
        t.create_tenant(tid, isolation=mode)
        with tenant_context(tid), t.session() as s:
            s.add_all([Note(body=f"{tid}-{i}") for i in range(3)])
            s.commit()


@pytest.fixture
async def make_web(
    make_tenantry: TenantryFactory, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[WebFactory]:
    """Build a Web on a fresh database of *backend* with TENANTS seeded."""
    made: list[Web] = []

    def factory(
        backend: str,
        *,
        tenants: Sequence[str] = TENANTS,
        resolvers: Callable[[Tenantry], Sequence[Resolver]] = default_resolvers,
        ttl: float = 5.0,
        **middleware: Any,
    ) -> Web:
        config = replace(make_config(backend, request, tmp_path), catalog_cache_ttl=ttl)
        t = make_tenantry(backend, config)
        seed(t, tenants)
        probe = Probe()
        middleware.setdefault("exclude_paths", ["/health"])
        middleware.setdefault("optional_paths", ["/public"])
        # Most tests here name the tenant by header, the shortest way to reach one;
        # test_credentials.py covers the default, which requires a credential.
        middleware.setdefault("trust_hints", True)
        app = TenantMiddleware(build_app(t, probe), t, resolvers(t), **middleware)
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://api.test"
        )
        web = Web(t, app, probe, client)
        made.append(web)
        return web

    yield factory
    for web in made:
        await web.client.aclose()
        await web.t.aclose()


class SQLLog:
    """Every statement any engine in this process sends, while installed."""

    def __init__(self) -> None:
        self.statements: list[str] = []

    def __call__(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.statements.append(statement)


@pytest.fixture
def sql_log() -> Iterator[SQLLog]:
    log = SQLLog()
    event.listen(Engine, "before_cursor_execute", log)
    yield log
    event.remove(Engine, "before_cursor_execute", log)


def set_status(t: Tenantry, tenant_id: str, status: TenantStatus) -> None:
    t.catalog.set_status(tenant_id, status)
