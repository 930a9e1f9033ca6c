"""Without an admin token, other web pages cannot drive the service through a browser.

DNS rebinding (a page whose name resolves to 127.0.0.1 talks to the service as
its own origin) arrives with a foreign ``Host``; a cross-site form or fetch
arrives with a foreign or missing ``Origin``. Both are refused, while the
service's own pages, the dashboard and ``/docs``, keep working at
http://127.0.0.1:PORT/. With an admin token, scripts without ``Origin`` are
unaffected and a browser's cross-site POST is refused too.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tenantry import Tenantry, TenantryConfig, TenantStatus
from tests.integration.service.conftest import AUTH, ServiceFactory, Svc, error_of
from tests.integration.service.test_browser import CHROMIUM_ARGS, REPO, chromium

__all__ = ["chromium"]  # the fixture, shared with the other browser test

LOCAL = "http://127.0.0.1:8765"
SUSPEND = "/api/v1/tenants/s2/suspend"
ClientFactory = Callable[[Svc, str], httpx.AsyncClient]


@pytest.fixture
async def client_for() -> AsyncIterator[ClientFactory]:
    """``client_for(svc, base_url)``: a client of *svc*'s app as a browser at *base_url* sees it."""
    made: list[httpx.AsyncClient] = []

    def factory(svc: Svc, base_url: str) -> httpx.AsyncClient:
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=svc.app), base_url=base_url)
        made.append(client)
        return client

    yield factory
    for client in made:
        await client.aclose()


async def _open_service(make_service: ServiceFactory) -> Svc:
    svc: Svc = await make_service(
        "sqlite", admin_token=None, insecure_dev=True, run_worker=False, tenants={"s2": "shared"}
    )
    return svc


async def _status(svc: Svc, tenant_id: str = "s2") -> TenantStatus:
    tenant = await asyncio.to_thread(svc.t.get_tenant, tenant_id)
    return tenant.status


async def test_a_rebound_host_gets_nothing_not_even_a_get(
    make_service: ServiceFactory, client_for: ClientFactory
) -> None:
    svc = await _open_service(make_service)
    rebound = client_for(svc, "http://evil.example:8765")
    listed = await rebound.get("/api/v1/tenants")
    assert listed.status_code == 403
    assert error_of(listed)["code"] == "forbidden"
    assert "evil.example" in error_of(listed)["message"]
    assert "localhost" in error_of(listed)["message"]
    page = await rebound.get("/dashboard/")
    assert page.status_code == 403
    assert page.headers["content-type"].startswith("text/html")
    assert "only to localhost" in page.text
    posted = await rebound.post(SUSPEND, headers={"Origin": "http://evil.example:8765"})
    assert posted.status_code == 403
    # A name that merely starts like a loopback one is no loopback name.
    lookalike = client_for(svc, "http://127.0.0.1.evil.example:8765")
    assert (await lookalike.get("/api/v1/tenants")).status_code == 403
    assert await _status(svc) is TenantStatus.ACTIVE


async def test_a_cross_site_post_is_refused_and_changes_nothing(
    make_service: ServiceFactory, client_for: ClientFactory
) -> None:
    svc = await _open_service(make_service)
    local = client_for(svc, LOCAL)
    refusals = [
        {"Origin": "http://evil.example"},  # a form or fetch on another site
        {},  # neither Origin nor Referer: no page of this service sent it
        {"Origin": "null"},  # a sandboxed frame
        {"Origin": "http://localhost:8765"},  # another origin on this machine
        {"Origin": "http://127.0.0.1:3000"},  # another local port, another origin
        {"Referer": "http://evil.example/attack.html"},
    ]
    for headers in refusals:
        response = await local.post(SUSPEND, headers=headers)
        assert response.status_code == 403, (headers, response.text)
        assert error_of(response)["code"] == "forbidden"
        assert "refused" in error_of(response)["message"]
    for method in ("PUT", "PATCH", "DELETE"):
        response = await local.request(method, "/api/v1/tenants/s2", json={"name": "x"})
        assert response.status_code == 403, (method, response.text)
    assert await _status(svc) is TenantStatus.ACTIVE


async def test_the_same_post_from_the_services_own_origin_works(
    make_service: ServiceFactory, client_for: ClientFactory
) -> None:
    svc = await _open_service(make_service)
    local = client_for(svc, LOCAL)
    suspended = await local.post(SUSPEND, headers={"Origin": LOCAL})
    assert suspended.status_code == 200, suspended.text
    assert await _status(svc) is TenantStatus.SUSPENDED
    resumed = await local.post(
        "/api/v1/tenants/s2/resume", headers={"Referer": f"{LOCAL}/docs"}
    )  # no Origin: the Referer is the fallback
    assert resumed.status_code == 200, resumed.text
    assert await _status(svc) is TenantStatus.ACTIVE
    for base in ("http://localhost:8765", "http://[::1]:8765"):
        other = client_for(svc, base)
        created = await other.post(
            "/api/v1/tenants", json={"id": f"t{len(base)}"}, headers={"Origin": base}
        )
        assert created.status_code == 201, (base, created.text)


async def test_pages_work_with_a_loopback_host_and_dashboard_forms_post(
    make_service: ServiceFactory, client_for: ClientFactory
) -> None:
    svc = await _open_service(make_service)
    local = client_for(svc, LOCAL)
    for path in ("/healthz", "/docs", "/openapi.json", "/api/v1/tenants", "/metrics"):
        response = await local.get(path)
        assert response.status_code == 200, (path, response.text)
    assert (await local.head("/docs/assets/favicon.png")).status_code == 200
    page = await local.get("/dashboard/", follow_redirects=True)
    assert page.status_code == 200
    assert "INSECURE DEV MODE" in page.text
    # The dashboard's pages let the browser send their origin on their own forms.
    assert page.headers["referrer-policy"] == "same-origin"
    tenant_page = await local.get("/dashboard/tenants/s2")
    csrf = re.search(r'name="csrf" value="([^"]+)"', tenant_page.text)
    assert csrf is not None
    form = {"csrf": csrf.group(1)}
    # What a browser sends for the form: Origin, CSRF token and session cookie.
    posted = await local.post("/dashboard/tenants/s2/suspend", data=form, headers={"Origin": LOCAL})
    assert posted.status_code == 303, posted.text
    assert await _status(svc) is TenantStatus.SUSPENDED
    # The same form posted by another site, even with a valid token, is refused.
    forged = await local.post(
        "/dashboard/tenants/s2/resume", data=form, headers={"Origin": "http://evil.example"}
    )
    assert forged.status_code == 403
    assert forged.headers["content-type"].startswith("text/html")
    assert await _status(svc) is TenantStatus.SUSPENDED


async def test_with_a_token_scripts_pass_and_cross_site_browsers_do_not(
    make_service: ServiceFactory, client_for: ClientFactory
) -> None:
    svc: Svc = await make_service("sqlite", run_worker=False, tenants={"s2": "shared"})
    curl = await svc.client.post(SUSPEND, headers=AUTH)  # no Origin: curl, scripts
    assert curl.status_code == 200, curl.text
    assert await _status(svc) is TenantStatus.SUSPENDED
    # Any Host is served: behind a proxy the service has whatever name it is given.
    named = client_for(svc, "https://admin.example.net")
    assert (await named.get("/api/v1/tenants", headers=AUTH)).status_code == 200
    cross = await named.post(
        "/api/v1/tenants/s2/resume", headers={**AUTH, "Origin": "https://evil.example"}
    )
    assert cross.status_code == 403
    assert error_of(cross)["code"] == "forbidden"
    assert await _status(svc) is TenantStatus.SUSPENDED
    own = await named.post(
        "/api/v1/tenants/s2/resume", headers={**AUTH, "Origin": "https://admin.example.net"}
    )
    assert own.status_code == 200, own.text
    assert await _status(svc) is TenantStatus.ACTIVE
    # A proxy that rewrites Host names the public one in X-Forwarded-Host.
    proxied = await svc.client.post(
        SUSPEND,
        headers={
            **AUTH,
            "Origin": "https://admin.example.net",
            "X-Forwarded-Host": "admin.example.net",
        },
    )
    assert proxied.status_code == 200, proxied.text
    # Without the token, a request is still a 401 whatever its Origin says.
    anonymous = await svc.client.post(SUSPEND, headers={"Origin": "http://svc.test"})
    assert anonymous.status_code == 401


@pytest.fixture
def open_service(tmp_path: Path) -> Iterator[tuple[str, Tenantry]]:
    """``tenantry serve --insecure-dev`` on a SQLite file this test also opens: (URL, catalog)."""
    url = f"sqlite:///{tmp_path / 'main.db'}"
    t = Tenantry(TenantryConfig.single(url))
    t.create_tenant("s2", isolation="shared")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTRY_")}
    env["TENANTRY_DATABASE_URL"] = url
    log = tmp_path / "service.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tenantry.cli.main", "serve", "--insecure-dev", "--port", "0"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    try:
        assert proc.stdout is not None
        found = re.search(r"tenantry service on (http://\S+)", proc.stdout.readline())
        assert found, log.read_text()
        yield found.group(1), t
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        finally:
            if proc.stdout is not None:
                proc.stdout.close()
            t.close()
    assert proc.returncode == 0, log.read_text()


@pytest.mark.browser
@pytest.mark.timeout(180)
def test_in_chromium_own_pages_write_and_other_origins_cannot(
    chromium: Path, open_service: tuple[str, Tenantry]
) -> None:
    """What a real browser sends: the dashboard's forms and /docs' fetches carry their origin."""
    from playwright.sync_api import expect, sync_playwright

    url, t = open_service
    port = url.rsplit(":", 1)[1]
    assert url == f"http://127.0.0.1:{port}"

    def status() -> TenantStatus:
        return t.get_tenant("s2").status

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(20_000)
            # The dashboard's own form (CSRF token, session cookie, Origin) works.
            page.goto(f"{url}/dashboard/tenants/s2")
            page.click("button:has-text('Suspend')")
            expect(page.locator("#tenant-status")).to_have_text("suspended")
            assert status() is TenantStatus.SUSPENDED
            # /docs "try it out" is a same-origin fetch: the browser sends Origin.
            page.goto(f"{url}/docs")
            resumed = page.evaluate(
                "async () => (await fetch('/api/v1/tenants/s2/resume', {method: 'POST'})).status"
            )
            assert resumed == 200
            assert status() is TenantStatus.ACTIVE
            # A page of another origin (localhost is another origin than 127.0.0.1)
            # fires a simple cross-site POST, which needs no CORS preflight.
            page.goto(f"http://localhost:{port}/healthz")
            page.evaluate(
                "async (target) => { await fetch(target, {method: 'POST', mode: 'no-cors'}); }",
                f"{url}/api/v1/tenants/s2/suspend",
            )
            assert status() is TenantStatus.ACTIVE
        finally:
            browser.close()
