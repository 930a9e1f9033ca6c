"""A service app on a real catalog (SQLite or PostgreSQL), its lifespan running.

The app's lifespan runs for real (queue set-up, sampler, embedded worker), and
requests go through httpx's ASGI transport, so every test sees the same
middleware, error handlers and threads a uvicorn process would.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from tenantry import Tenantry, tenant_context
from tenantry.queue import JobRegistry, WorkerOptions
from tenantry.service import ServiceSettings, create_app
from tenantry.service.state import ServiceState
from tests.conftest import TenantryFactory
from tests.integration.service.jobs import registry as service_registry
from tests.models import Note

ADMIN_TOKEN = "admin-token-for-tests-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
_DEFAULT = object()


@dataclass
class Svc:
    t: Tenantry
    app: FastAPI
    client: httpx.AsyncClient

    @property
    def state(self) -> ServiceState:
        state = self.app.state.service
        assert isinstance(state, ServiceState)
        return state

    async def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """An admin API call with the token."""
        headers = {**AUTH, **kwargs.pop("headers", {})}
        return await self.client.request(method, "/api/v1" + path, headers=headers, **kwargs)

    async def ok(self, method: str, path: str, status: int = 200, **kwargs: Any) -> Any:
        response = await self.api(method, path, **kwargs)
        assert response.status_code == status, response.text
        return response.json() if response.content else None

    def notes(self, tenant_id: str) -> list[str]:
        with tenant_context(tenant_id), self.t.session() as s:
            return sorted(s.scalars(select(Note.body)))

    async def wait_for(
        self, predicate: Callable[[], bool], what: str, timeout: float = 20.0
    ) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not await asyncio.to_thread(predicate):
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.05)


ServiceFactory = Callable[..., Any]


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}, body
    assert {"code", "message"} <= set(body["error"]), body
    error = body["error"]
    assert isinstance(error, dict)
    return error


@pytest.fixture
async def make_service(make_tenantry: TenantryFactory) -> AsyncIterator[ServiceFactory]:
    """``await make_service(backend, registry=..., run_worker=..., **settings)``."""
    stack = AsyncExitStack()
    made: list[Svc] = []

    async def factory(
        backend: str,
        *,
        registry: JobRegistry | object | None = _DEFAULT,
        run_worker: bool = True,
        worker_options: Mapping[str, Any] | None = None,
        tenants: Mapping[str, str] | None = None,
        **settings: Any,
    ) -> Svc:
        t = make_tenantry(backend)
        for tenant_id, mode in (tenants or {}).items():
            t.create_tenant(tenant_id, isolation=mode)
        settings.setdefault("admin_token", ADMIN_TOKEN)
        settings.setdefault("sample_interval", 0.2)
        options: dict[str, Any] = {"poll_interval": 0.05, "concurrency": 4, "shutdown_grace": 5.0}
        options.update(worker_options or {})
        app = create_app(
            t,
            service_registry if registry is _DEFAULT else registry,  # type: ignore[arg-type]
            settings=ServiceSettings(**settings),
            run_worker=run_worker,
            worker_options=WorkerOptions(**options),
        )
        await stack.enter_async_context(app.router.lifespan_context(app))
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://svc.test"
        )
        svc = Svc(t, app, client)
        made.append(svc)
        return svc

    yield factory
    await stack.aclose()
    for svc in made:
        await svc.client.aclose()
        await svc.t.aclose()
