"""Dashboard pages over HTTP (the browser test drives the same pages in Chromium)."""

from __future__ import annotations

import asyncio
import re

import pytest
from markupsafe import escape

from tests.integration.service.conftest import ServiceFactory, Svc
from tests.integration.service.test_auth import login

HOSTILE = '<script>alert("x")</script>'


async def test_overview_lists_tenants_and_refreshes(make_service: ServiceFactory) -> None:
    svc: Svc = await make_service("sqlite", run_worker=False, tenants={"acme": "shared"})
    await asyncio.to_thread(svc.t.create_tenant, "evil", name=HOSTILE)
    for _ in range(3):
        await svc.ok(
            "POST",
            "/tenants/acme/jobs",
            201,
            json={"kind": "record", "payload": {"key": "k"}, "delay_seconds": 0},
        )
    await login(svc)
    await svc.state.monitor.refresh()  # pages show the sampler's latest reading
    page = await svc.client.get("/dashboard/")
    assert page.status_code == 200
    rows = dict(
        re.findall(r'data-tenant="(\w+)".*?class="num depth-available">(\d+)<', page.text, re.S)
    )
    assert rows == {"acme": "3", "evil": "0"}
    assert HOSTILE not in page.text  # autoescaped
    assert str(escape(HOSTILE)) in page.text
    assert 'id="throughput-chart"' in page.text

    first = await svc.client.get("/dashboard/live")
    seq = int(re.search(r'data-seq="(\d+)"', first.text).group(1))  # type: ignore[union-attr]
    await asyncio.sleep(0.5)  # the sampler runs every 0.2 s in these tests
    later = await svc.client.get("/dashboard/live")
    assert int(re.search(r'data-seq="(\d+)"', later.text).group(1)) > seq  # type: ignore[union-attr]
    assert "<html" not in later.text  # a fragment, swapped into the page


async def test_dead_letters_show_errors_and_retry_requeues(make_service: ServiceFactory) -> None:
    svc: Svc = await make_service("sqlite", tenants={"acme": "shared", "globex": "database"})
    job = await svc.ok(
        "POST", "/tenants/globex/jobs", 201, json={"kind": "fail", "payload": {"key": HOSTILE}}
    )
    await svc.wait_for(
        lambda: svc.state.queue.admin.count_jobs(tenant_id="globex")["dead"] == 1, "a dead job"
    )
    csrf = await login(svc)
    page = await svc.client.get("/dashboard/dead")
    assert page.status_code == 200
    assert f'data-job="globex/{job["id"]}"' in page.text
    assert "DownstreamError" in page.text
    assert str(escape(f"boom: {HOSTILE}")) in page.text
    assert HOSTILE not in page.text
    assert 'class="traceback"' in page.text
    assert "raise DownstreamError" in page.text
    filtered = await svc.client.get("/dashboard/dead", params={"tenant": "acme"})
    assert 'id="no-dead"' in filtered.text
    bad = await svc.client.get("/dashboard/dead", params={"tenant": "Not-An-Id"})
    assert bad.status_code == 422

    retried = await svc.client.post(
        f"/dashboard/tenants/globex/jobs/{job['id']}/retry",
        data={"csrf": csrf, "next": "/dashboard/dead"},
    )
    assert retried.status_code == 303
    assert retried.headers["location"] == f"/dashboard/dead?notice=retried&n={job['id']}"
    # Requeued in the database, then run (and, being a 'fail' job, dead again).
    await svc.wait_for(
        lambda: svc.state.queue.admin.get_job("globex", job["id"]).attempt == 2,
        "the second attempt",
    )
    await svc.wait_for(
        lambda: svc.state.queue.admin.get_job("globex", job["id"]).state.value == "dead",
        "dead again",
    )
    notice = await svc.client.get(retried.headers["location"])
    assert f"Job {job['id']} was requeued." in notice.text

    again = await svc.client.post(
        f"/dashboard/tenants/globex/jobs/{job['id']}/cancel",
        data={"csrf": csrf, "next": "/dashboard/dead"},
    )
    assert again.status_code == 409  # a dead job cannot be cancelled: shown, not a 500
    assert "allowed from" in again.text


@pytest.mark.parametrize("path", ["/dashboard/tenants/acme", "/dashboard/tenants/acme?state=dead"])
async def test_tenant_and_job_pages(make_service: ServiceFactory, path: str) -> None:
    svc: Svc = await make_service("sqlite", run_worker=False, tenants={"acme": "shared"})
    job = await svc.ok(
        "POST",
        "/tenants/acme/jobs",
        201,
        json={"kind": "record", "payload": {"key": HOSTILE}, "delay_seconds": 60},
    )
    await svc.ok("POST", "/tenants/acme/api-keys", 201, json={"name": "ci-key"})
    csrf = await login(svc)
    page = await svc.client.get(path)
    assert page.status_code == 200
    assert "ci-key" in page.text
    if "state=dead" in path:
        assert f"/dashboard/tenants/acme/jobs/{job['id']}" not in page.text
    else:
        assert f"/dashboard/tenants/acme/jobs/{job['id']}" in page.text
    detail = await svc.client.get(f"/dashboard/tenants/acme/jobs/{job['id']}")
    assert detail.status_code == 200
    assert 'id="job-state">scheduled<' in detail.text
    assert HOSTILE not in detail.text
    cancel = await svc.client.post(
        f"/dashboard/tenants/acme/jobs/{job['id']}/cancel",
        data={"csrf": csrf, "next": f"/dashboard/tenants/acme/jobs/{job['id']}"},
    )
    assert cancel.status_code == 303
    assert svc.state.queue.admin.get_job("acme", job["id"]).state.value == "cancelled"
    missing = await svc.client.get("/dashboard/tenants/nobody")
    assert missing.status_code == 404
    assert "does not exist" in missing.text
    assert (await svc.client.get("/dashboard/tenants/acme/jobs/424242")).status_code == 404


async def test_api_docs_are_served_from_local_files(make_service: ServiceFactory) -> None:
    svc: Svc = await make_service("sqlite", run_worker=False)
    page = await svc.client.get("/docs")  # no token, as /openapi.json
    assert page.status_code == 200
    urls = re.findall(r'(?:src|href)="([^"]+)"', page.text) + re.findall(
        r"url: '([^']+)'", page.text
    )
    assert "/docs/assets/swagger-ui-bundle.js" in urls
    assert "/docs/assets/swagger-ui.css" in urls
    assert "/openapi.json" in urls
    assert all(url.startswith("/") and not url.startswith("//") for url in urls), urls
    assert '"validatorUrl": null' in page.text  # no request to validator.swagger.io
    for asset, media in [
        ("swagger-ui-bundle.js", "javascript"),
        ("swagger-ui.css", "text/css"),
        ("favicon.png", "image/png"),
    ]:
        response = await svc.client.get(f"/docs/assets/{asset}")
        assert response.status_code == 200, asset
        assert media in response.headers["content-type"], asset
    schema = await svc.client.get("/openapi.json")
    assert schema.status_code == 200
    assert "/api/v1/tenants" in schema.json()["paths"]
    assert "/docs" not in schema.json()["paths"]
    await login(svc)
    assert 'href="/docs"' in (await svc.client.get("/dashboard/")).text  # the nav links to it
