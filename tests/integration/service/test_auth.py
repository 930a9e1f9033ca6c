"""The admin token guards every admin route; the dashboard needs a session and CSRF tokens."""

from __future__ import annotations

import copy
import logging
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.routing import BaseRoute, Route

from tenantry.errors import ConfigError
from tenantry.service import ServiceSettings
from tenantry.service.auth import SESSION_COOKIE
from tests.integration.service.conftest import ADMIN_TOKEN, AUTH, ServiceFactory, Svc, error_of

SAMPLE_PARAMS = {"tenant_id": "acme", "job_id": "1", "key_id": "0123456789ab"}


def _path(template: str) -> str:
    return re.sub(r"{(\w+)}", lambda m: SAMPLE_PARAMS[m.group(1)], template)


def all_routes(routes: Sequence[BaseRoute], prefix: str = "") -> Iterator[Route]:
    """Every route of an app, including those of routers it includes.

    FastAPI 0.165 keeps an included router as one ``_IncludedRouter`` entry
    (``original_router`` plus the include's prefix), so the walk descends.
    """
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            context = getattr(route, "include_context", None)
            yield from all_routes(included.routes, prefix + getattr(context, "prefix", ""))
        elif isinstance(route, Route):
            if prefix:
                route = copy.copy(route)
                route.path = prefix + route.path
            yield route


def _methods(svc: Svc, under: str) -> list[tuple[str, str]]:
    return sorted(
        (method, _path(route.path))
        for route in all_routes(svc.app.routes)
        if route.path.startswith(under)
        for method in (route.methods or ())
        if method != "HEAD"
    )


def admin_routes(svc: Svc) -> list[tuple[str, str]]:
    found = _methods(svc, "/api")
    documented = sorted(
        (method.upper(), _path(path))
        for path, operations in svc.app.openapi()["paths"].items()
        for method in operations
    )
    assert set(documented) <= set(found)  # the walk missed nothing the schema shows
    assert len(found) >= 20, found
    return found


def dashboard_routes(svc: Svc) -> list[tuple[str, str]]:
    found = _methods(svc, "/dashboard")
    assert len(found) >= 10, found
    return found


async def login(svc: Svc) -> str:
    """Log the client in through the form; returns the session's CSRF token."""
    response = await svc.client.post(
        "/dashboard/login", data={"token": ADMIN_TOKEN, "next": "/dashboard/"}
    )
    assert response.status_code == 303, response.text
    page = await svc.client.get("/dashboard/")
    assert page.status_code == 200
    match = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert match is not None
    return match.group(1)


async def test_every_admin_route_refuses_a_missing_or_wrong_token(
    make_service: ServiceFactory,
) -> None:
    svc: Svc = await make_service("sqlite", tenants={"acme": "shared"})
    wrong = [
        {},
        {"Authorization": "Bearer not-the-admin-token-at-all"},
        {"Authorization": f"Bearer {ADMIN_TOKEN}x"},
        {"Authorization": f"Basic {ADMIN_TOKEN}"},
        {"Authorization": ADMIN_TOKEN},
        {"X-API-Key": ADMIN_TOKEN},
    ]
    for method, path in admin_routes(svc):
        for headers in wrong:
            response = await svc.client.request(method, path, headers=headers, json={})
            assert response.status_code == 401, (method, path, headers, response.text)
            assert error_of(response)["code"] == "unauthorized"
            assert response.headers["www-authenticate"] == "Bearer"
    assert svc.t.get_tenant("acme")  # nothing above deleted it without the token
    # The right token gets past authentication on every route (whatever the answer then).
    for method, path in admin_routes(svc):
        response = await svc.client.request(method, path, headers=AUTH, json={})
        assert response.status_code != 401, (method, path, response.text)


async def test_metrics_take_the_metrics_token_or_the_admin_token(
    make_service: ServiceFactory,
) -> None:
    metrics_token = "metrics-token-0123456789abcdef"
    svc: Svc = await make_service("sqlite", metrics_token=metrics_token)
    assert (await svc.client.get("/metrics")).status_code == 401
    bad = await svc.client.get("/metrics", headers={"Authorization": "Bearer nope-nope-nope-nope"})
    assert bad.status_code == 401
    for token in (metrics_token, ADMIN_TOKEN):
        ok = await svc.client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200
        assert ok.headers["content-type"].startswith("text/plain; version=0.0.4")
    # The metrics token opens /metrics only.
    api = await svc.client.get(
        "/api/v1/tenants", headers={"Authorization": f"Bearer {metrics_token}"}
    )
    assert api.status_code == 401

    public: Svc = await make_service("sqlite", metrics_public=True)
    assert (await public.client.get("/metrics")).status_code == 200
    assert (await public.client.get("/api/v1/tenants")).status_code == 401


async def test_dashboard_needs_a_session_and_its_forms_a_csrf_token(
    make_service: ServiceFactory,
) -> None:
    svc: Svc = await make_service("sqlite", tenants={"acme": "shared"})
    for method, path in dashboard_routes(svc):
        if path == "/dashboard/login":
            continue
        response = await svc.client.request(method, path)
        if path == "/dashboard/live":
            assert response.status_code == 401, path  # polled by script: no redirect
        else:
            assert response.status_code == 303, (method, path)
            assert response.headers["location"].startswith("/dashboard/login?next="), path

    wrong = await svc.client.post("/dashboard/login", data={"token": "guess-guess-guess-guess"})
    assert wrong.status_code == 401
    assert SESSION_COOKIE not in wrong.cookies
    assert "not the admin token" in wrong.text

    response = await svc.client.post(
        "/dashboard/login", data={"token": ADMIN_TOKEN, "next": "https://evil.example/"}
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/dashboard/"  # no open redirect
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    assert ADMIN_TOKEN not in cookie

    csrf = await login(svc)
    posts = [(m, p) for m, p in dashboard_routes(svc) if m == "POST" and "login" not in p]
    assert len(posts) >= 5
    for _method, path in posts:
        for data in ({}, {"csrf": "forged"}, {"csrf": csrf + "x"}):
            refused = await svc.client.post(path, data=data)
            assert refused.status_code == 403, (path, data)
    assert svc.t.get_tenant("acme").status.value == "active"  # the forged suspend did nothing

    suspended = await svc.client.post(
        "/dashboard/tenants/acme/suspend", data={"csrf": csrf, "next": "/dashboard/tenants/acme"}
    )
    assert suspended.status_code == 303
    assert suspended.headers["location"] == "/dashboard/tenants/acme?notice=suspended"
    assert svc.t.get_tenant("acme").status.value == "suspended"

    # A tampered or foreign cookie is no session.
    value = svc.client.cookies[SESSION_COOKIE]
    sid, expires, signature = value.split(".")
    for forged in (f"{sid}.{int(expires) + 9999}.{signature}", f"x{sid}.{expires}.{signature}"):
        svc.client.cookies.set(SESSION_COOKIE, forged)
        assert (await svc.client.get("/dashboard/")).status_code == 303
    other: Svc = await make_service("sqlite")  # another process: another secret
    other.client.cookies.set(SESSION_COOKIE, value)
    assert (await other.client.get("/dashboard/")).status_code == 303


async def test_dashboard_pages_forbid_framing_and_foreign_scripts(
    make_service: ServiceFactory,
) -> None:
    svc: Svc = await make_service("sqlite")
    await login(svc)
    page = await svc.client.get("/dashboard/")
    policy = page.headers["content-security-policy"]
    nonce = re.search(r"'nonce-([^']+)'", policy)
    assert nonce is not None
    assert "frame-ancestors 'none'" in policy
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["cache-control"] == "no-store"
    scripts = re.findall(r"<script([^>]*)>", page.text)
    assert scripts
    assert all(f'nonce="{nonce.group(1)}"' in attrs for attrs in scripts)
    assert "http://" not in page.text.split("<body>")[1].replace("http://www.w3.org/2000/svg", "")


async def test_insecure_dev_opens_the_admin_routes_and_says_so(
    make_service: ServiceFactory, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="tenantry"):
        svc: Svc = await make_service("sqlite", admin_token=None, insecure_dev=True)
    assert any("INSECURE DEV MODE" in r.getMessage() for r in caplog.records)
    # Only loopback names are served, and writes need the service's own Origin
    # (test_insecure_dev.py): this client is a browser page at 127.0.0.1.
    local = "http://127.0.0.1:8000"
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=svc.app), base_url=local, headers={"Origin": local}
    ) as client:
        listed = await client.get("/api/v1/tenants")
        assert listed.status_code == 200
        created = await client.post("/api/v1/tenants", json={"id": "devco"})
        assert created.status_code == 201
        assert (await client.get("/metrics")).status_code == 200
        # The dashboard logs in without asking, but its forms still need the CSRF token.
        page = await client.get("/dashboard/", follow_redirects=True)
        assert page.status_code == 200
        assert "INSECURE DEV MODE" in page.text
        refused = await client.post("/dashboard/tenants/devco/suspend", data={})
        assert refused.status_code == 403


def test_the_service_refuses_to_be_built_without_a_usable_token() -> None:
    with pytest.raises(ConfigError, match="admin token"):
        ServiceSettings()
    with pytest.raises(ConfigError, match="at least 16"):
        ServiceSettings(admin_token="short")
    with pytest.raises(ConfigError, match="at least 16"):
        ServiceSettings(admin_token=" " + ADMIN_TOKEN)
    with pytest.raises(ConfigError, match="metrics_token"):
        ServiceSettings(admin_token=ADMIN_TOKEN, metrics_token="short")
    assert ServiceSettings(insecure_dev=True).open_admin
    assert not ServiceSettings(admin_token=ADMIN_TOKEN, insecure_dev=True).open_admin


def _cli(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> list[str]:
    return [sys.executable, "-m", "tenantry.cli.main", *args]


def _clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    import os

    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("TENANTRY_") and k not in ("COLUMNS", "FORCE_COLOR")
    }
    env["TENANTRY_DATA_DIR"] = str(tmp_path / "data")
    env.update(extra)
    return env


def test_tenantry_serve_will_not_start_without_a_token(tmp_path: Path) -> None:
    env = _clean_env(tmp_path)
    proc = subprocess.run(
        _cli(tmp_path, "serve", "--port", "0"),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "error: the service needs an admin token" in proc.stderr
    assert "Uvicorn running" not in proc.stderr
    remote = subprocess.run(
        _cli(tmp_path, "serve", "--insecure-dev", "--host", "0.0.0.0", "--port", "0"),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert remote.returncode == 1
    assert "--insecure-dev serves only on a loopback address" in remote.stderr


def _wait_for_url(proc: subprocess.Popen[str], timeout: float = 30.0) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        found = re.search(r"tenantry service on (http://\S+)", line)
        if found:
            return found.group(1)
        if proc.poll() is not None:
            break
    raise AssertionError(f"the service did not print its URL (exit {proc.poll()})")


def _get(url: str, **kwargs: Any) -> httpx.Response:
    deadline = time.monotonic() + 30
    while True:
        try:
            return httpx.get(url, timeout=5, **kwargs)
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_tenantry_serve_insecure_dev_serves_without_a_token_and_warns(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        _cli(tmp_path, "serve", "--insecure-dev", "--port", "0"),
        cwd=tmp_path,
        env=_clean_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = _wait_for_url(proc)
        listed = _get(f"{url}/api/v1/tenants")
        assert listed.status_code == 200
        assert listed.json()["items"] == []
    finally:
        proc.terminate()
        _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "WARNING: INSECURE DEV MODE" in err
    assert (tmp_path / "data" / "default.db").exists()  # the embedded SQLite default


def test_tenantry_serve_with_a_token_from_the_environment(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        _cli(tmp_path, "serve", "--port", "0"),
        cwd=tmp_path,
        env=_clean_env(tmp_path, TENANTRY_ADMIN_TOKEN=ADMIN_TOKEN),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = _wait_for_url(proc)
        assert _get(f"{url}/api/v1/tenants").status_code == 401
        assert _get(f"{url}/api/v1/tenants", headers=AUTH).status_code == 200
        assert _get(f"{url}/healthz").text == "ok"
    finally:
        proc.terminate()
        _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "INSECURE" not in err
    assert ADMIN_TOKEN not in err
