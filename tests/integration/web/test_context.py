"""The tenant context lives exactly as long as the request, and never crosses requests."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from tenantry import current_tenant_or_none, tenant_context
from tenantry.web.asgi import Message, Receive, Scope, Send
from tests.integration.web.conftest import TENANTS, WebFactory, bearer, make_token
from tests.models import Note


async def test_context_is_reset_after_each_request_on_the_same_task(
    make_web: WebFactory,
) -> None:
    # httpx's ASGITransport runs the app on the caller's task, so a tenant the
    # middleware failed to reset would be visible right here.
    web = make_web("sqlite")
    for tid in TENANTS:
        response = await web.get("/notes", headers={"X-Tenant-ID": tid})
        assert response.json()["seen"] == [tid] * 3
        assert current_tenant_or_none() is None
        response = await web.get("/public")
        assert response.json()["context"] is None


async def test_context_is_reset_when_the_app_raises(make_web: WebFactory) -> None:
    web = make_web("sqlite")

    async def failing(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError(f"boom in {current_tenant_or_none()}")

    from tenantry.web import TenantMiddleware

    middleware = TenantMiddleware(
        failing, web.t, [*web.app.chain.resolvers], trust_hints=web.app.trust_hints
    )
    scope: dict[str, Any] = {
        "type": "http",
        "path": "/x",
        "headers": [(b"x-tenant-id", b"acme")],
    }

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        pass

    with pytest.raises(RuntimeError, match="boom in acme"):
        await middleware(scope, receive, send)
    assert current_tenant_or_none() is None


async def test_a_tenant_in_the_callers_context_never_reaches_a_tenantless_request(
    make_web: WebFactory,
) -> None:
    web = make_web("sqlite")
    with tenant_context("globex"):
        response = await web.get("/public")
        assert response.json() == {"context": None, "state": None}
        response = await web.get("/notes", headers={"X-Tenant-ID": "acme"})
        assert response.json()["seen"] == ["acme"] * 3
        assert current_tenant_or_none() == "globex"


async def test_concurrent_requests_never_see_each_others_tenant(
    make_web: WebFactory, backend: str
) -> None:
    web = make_web(backend)
    keys = {tid: web.t.api_keys.issue(tid).key for tid in TENANTS}
    rng = random.Random(6)

    def request_for(tid: str) -> tuple[str, dict[str, str]]:
        how = rng.choice(["header", "host", "jwt", "api_key"])
        if how == "header":
            return "/notes", {"X-Tenant-ID": tid}
        if how == "host":
            return f"http://{tid}.example.com/notes", {}
        if how == "jwt":
            return "/notes", bearer(make_token(tid))
        return "/notes", {"X-API-Key": keys[tid]}

    plan = [rng.choice(TENANTS) for _ in range(200)]
    requests = [request_for(tid) for tid in plan]
    responses = await asyncio.gather(
        *(web.client.get(url, headers=headers) for url, headers in requests)
    )
    for tid, response in zip(plan, responses, strict=True):
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["seen"] == [tid] * 3
        assert body["bodies"] == [f"{tid}-{i}" for i in range(3)]
        assert set(body["owners"]) == {tid}
        assert body["state"] == tid
    # The requests really overlapped inside the endpoint.
    assert web.probe.max_in_flight > 1


async def test_streaming_body_is_produced_inside_the_tenant_context(
    make_web: WebFactory, backend: str
) -> None:
    web = make_web(backend)
    async with web.client.stream("GET", "/stream", headers={"X-Tenant-ID": "initech"}) as response:
        assert response.status_code == 200
        lines = [line async for line in response.aiter_lines() if line]
    assert lines == [f"{i}:initech:3" for i in range(3)]
    assert current_tenant_or_none() is None


async def test_background_task_runs_for_the_requests_tenant(
    make_web: WebFactory, backend: str
) -> None:
    web = make_web(backend)
    response = await web.get("/background", headers=bearer(make_token("globex")))
    assert response.text == "accepted"
    assert web.probe.background == ["globex"]
    with tenant_context("globex"), web.t.session() as session:
        assert "from background" in session.scalars(select(Note.body)).all()
    with tenant_context("acme"), web.t.session() as session:
        assert "from background" not in session.scalars(select(Note.body)).all()


async def websocket_exchange(app: Any, headers: list[tuple[bytes, bytes]]) -> list[Message]:
    """Drive one WebSocket connection by hand: connect, then collect what the app sends."""
    incoming: asyncio.Queue[Message] = asyncio.Queue()
    incoming.put_nowait({"type": "websocket.connect"})
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)
        if message["type"] == "websocket.close":
            incoming.put_nowait({"type": "websocket.disconnect", "code": message["code"]})

    scope = {"type": "websocket", "path": "/ws", "headers": headers, "subprotocols": []}
    await app(scope, incoming.get, send)
    return sent


async def test_websocket_gets_the_tenant_and_refusals_close_the_handshake(
    make_web: WebFactory,
) -> None:
    web = make_web("sqlite")
    sent = await websocket_exchange(web.app, [(b"x-tenant-id", b"acme")])
    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.send", "websocket.close"]
    assert sent[1]["text"] == "acme"
    refused = await websocket_exchange(web.app, [(b"x-tenant-id", b"nobody")])
    assert len(refused) == 1
    assert refused[0]["type"] == "websocket.close"
    assert refused[0]["code"] == 1008
    assert refused[0]["reason"].startswith("tenant_not_found")
    assert current_tenant_or_none() is None


async def test_two_requests_on_a_shared_httpx_client_stay_apart(make_web: WebFactory) -> None:
    web = make_web("sqlite")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=web.app), base_url="http://acme.example.com"
    ) as client:
        first, second = await asyncio.gather(
            client.get("/notes"), client.get("http://globex.example.com/notes")
        )
    assert first.json()["seen"] == ["acme"] * 3
    assert second.json()["seen"] == ["globex"] * 3
