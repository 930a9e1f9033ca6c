"""The dashboard's search, pages, filters, chart ranges and timestamps over HTTP.

Also what odd query strings get: each is a 400 page or the default, never a
500. The overview is paged through a catalog of ten thousand tenants on both
backends.
"""

from __future__ import annotations

import asyncio
import re
import time
from datetime import UTC, datetime

import pytest
from sqlalchemy import insert

from tenantry import tenant_context
from tenantry.queue import Queue
from tenantry.tenancy.catalog import IsolationMode, Tenant, TenantStatus, tenants_table
from tests.conftest import BACKENDS
from tests.integration.service.conftest import ServiceFactory, Svc
from tests.integration.service.jobs import registry
from tests.integration.service.test_auth import login

pytestmark = pytest.mark.parametrize("backend", BACKENDS)

MANY = 10_000


def add_catalog_entries(svc: Svc, count: int) -> None:
    """*count* shared tenants ``t00000``... named ``Customer 00000``..., in one insert.

    Shared tenants on the default store need nothing but their catalog
    entry, so one multi-row insert stands in for ten thousand provisionings.
    """
    now = datetime.now(UTC)
    rows = []
    for i in range(count):
        tenant = Tenant(
            id=f"t{i:05d}",
            name=f"Customer {i:05d}",
            status=TenantStatus.ACTIVE,
            isolation=IsolationMode.SHARED,
            store="default",
            created_at=now,
            updated_at=now,
        )
        row = tenant.to_dict()
        row.update(created_at=now, updated_at=now)
        rows.append(row)
    with svc.t.catalog.engine.begin() as conn:
        conn.execute(insert(tenants_table), rows)
    svc.t.catalog.invalidate()


def tenant_ids(html: str) -> list[str]:
    return re.findall(r'<tr data-tenant="([^"]+)"', html)


async def test_overview_search_and_pages_through_ten_thousand_tenants(
    make_service: ServiceFactory, backend: str
) -> None:
    svc: Svc = await make_service(backend, run_worker=False, tenants={"acme": "shared"})
    await asyncio.to_thread(add_catalog_entries, svc, MANY)
    await asyncio.to_thread(svc.t.create_tenant, "needle", name="Haystack Needle Works")
    for _ in range(2):
        await svc.ok(
            "POST", "/tenants/acme/jobs", 201, json={"kind": "record", "payload": {"key": "k"}}
        )
    await login(svc)
    await svc.state.monitor.refresh()

    started = time.perf_counter()
    first = await svc.client.get("/dashboard/")
    elapsed = time.perf_counter() - started
    assert first.status_code == 200
    ids = tenant_ids(first.text)
    assert len(ids) == 100
    assert ids[0] == "acme"  # the deepest queue first, as before paging
    assert ids[1:3] == ["needle", "t00000"]  # then by id
    assert 'id="tenant-page">1<' in first.text
    assert "of 101" in first.text  # 10,002 tenants, 100 a page
    assert 'href="/dashboard/?page=2" rel="next"' in first.text
    assert elapsed < 10, elapsed  # generous: a shared CI machine, both backends

    second = await svc.client.get("/dashboard/", params={"page": "2"})
    assert tenant_ids(second.text)[0] == "t00098"
    past_the_end = await svc.client.get("/dashboard/", params={"page": "5000"})
    assert past_the_end.status_code == 200  # the last page, not an error
    assert tenant_ids(past_the_end.text)[-1] == "t09999"
    assert 'id="tenant-page">101<' in past_the_end.text

    by_name = await svc.client.get("/dashboard/", params={"q": "NEEDLE"})
    assert tenant_ids(by_name.text) == ["needle"]
    assert 'id="tenant-matches">1<' in by_name.text
    assert 'value="NEEDLE"' in by_name.text  # the box keeps what was searched
    by_id = await svc.client.get("/dashboard/", params={"q": "t0999"})
    assert tenant_ids(by_id.text) == [f"t0999{i}" for i in range(10)]
    assert 'id="tenant-pager"' not in by_id.text  # one page: no pager
    paged_search = await svc.client.get("/dashboard/", params={"q": "customer 01", "page": "3"})
    assert tenant_ids(paged_search.text)[0] == "t01200"
    assert "q=customer+01&amp;page=2" in paged_search.text  # the pager keeps the search
    nothing = await svc.client.get("/dashboard/", params={"q": "no-such-tenant"})
    assert tenant_ids(nothing.text) == []
    assert 'id="no-tenants"' in nothing.text
    hostile = await svc.client.get("/dashboard/", params={"q": '<script>"x'})
    assert hostile.status_code == 200
    assert '<script>"x' not in hostile.text  # shown escaped, in the box and the heading
    assert hostile.text.count("&lt;script&gt;&#34;x") == 3

    # The polled fragment shows the same page and search as the page that polls it.
    assert 'data-src="/dashboard/live?q=customer+01&amp;page=3"' in paged_search.text
    live = await svc.client.get("/dashboard/live", params={"q": "customer 01", "page": "3"})
    assert tenant_ids(live.text) == tenant_ids(paged_search.text)


SUPERSCRIPT_TWO = "\u00b2"  # isdigit() but not int()
HUGE = "9" * 5000  # more digits than int() converts


@pytest.mark.parametrize(
    ("path", "query"),
    [
        ("/dashboard/", {"page": SUPERSCRIPT_TWO}),
        ("/dashboard/", {"page": HUGE}),
        ("/dashboard/", {"page": "0"}),
        ("/dashboard/", {"page": "-1"}),
        ("/dashboard/", {"page": "1.5"}),
        ("/dashboard/", {"page": "\u0661"}),  # ARABIC-INDIC DIGIT ONE
        ("/dashboard/live", {"page": SUPERSCRIPT_TWO}),
        ("/dashboard/live", {"page": HUGE}),
        ("/dashboard/dead", {"page": SUPERSCRIPT_TWO}),
        ("/dashboard/dead", {"page": HUGE}),
        ("/dashboard/dead", {"page": "1001"}),
        ("/dashboard/tenants/acme", {"page": SUPERSCRIPT_TWO}),
        ("/dashboard/tenants/acme", {"page": HUGE}),
        ("/dashboard/tenants/acme", {"state": "bogus"}),
        ("/dashboard/tenants/acme", {"kind": "x" * 201}),
        ("/dashboard/tenants/acme", {"kind": "a\u0000b"}),
        ("/dashboard/", {"q": "x" * 201}),
        ("/dashboard/", {"range": "1y"}),
    ],
)
async def test_malformed_query_parameters_give_a_400_page(
    make_service: ServiceFactory, backend: str, path: str, query: dict[str, str]
) -> None:
    svc: Svc = await make_service(backend, run_worker=False, tenants={"acme": "shared"})
    await login(svc)
    response = await svc.client.get(path, params=query)
    assert response.status_code == 400, response.text
    assert 'id="error-message"' in response.text
    name = next(iter(query))
    assert f"{name} must be" in response.text


@pytest.mark.parametrize("n", [SUPERSCRIPT_TWO, HUGE, "-3", "x"])
async def test_a_malformed_notice_number_is_left_out(
    make_service: ServiceFactory, backend: str, n: str
) -> None:
    svc: Svc = await make_service(backend, run_worker=False, tenants={"acme": "shared"})
    await login(svc)
    response = await svc.client.get("/dashboard/", params={"notice": "retried", "n": n})
    assert response.status_code == 200
    assert 'id="notice">Job  was requeued.<' in response.text
    good = await svc.client.get("/dashboard/dead", params={"notice": "retried", "n": "42"})
    assert 'id="notice">Job 42 was requeued.<' in good.text


async def test_empty_parameters_mean_the_defaults(
    make_service: ServiceFactory, backend: str
) -> None:
    svc: Svc = await make_service(backend, run_worker=False, tenants={"acme": "shared"})
    await login(svc)
    for path in ("/dashboard/", "/dashboard/dead", "/dashboard/tenants/acme"):
        response = await svc.client.get(
            path, params={"page": "", "q": "  ", "state": "", "kind": "", "range": ""}
        )
        assert response.status_code == 200, (path, response.text)


async def test_the_jobs_of_a_tenant_filter_by_kind_and_state(
    make_service: ServiceFactory, backend: str
) -> None:
    svc: Svc = await make_service(backend, run_worker=False, tenants={"acme": "shared"})
    queue = Queue(svc.t, registry)
    with tenant_context("acme"):
        records = queue.enqueue_many("record", [{"key": f"r{i}"} for i in range(55)], delay=600)
        flaky = queue.enqueue("flaky", {"key": "f"}, delay=600)
        failing = queue.enqueue("fail", {"key": "x"}, delay=600)
    queue.admin.cancel_job("acme", failing.id)
    await login(svc)

    def job_ids(html: str) -> set[int]:
        return {int(i) for i in re.findall(r'href="/dashboard/tenants/acme/jobs/(\d+)"', html)}

    page = await svc.client.get("/dashboard/tenants/acme", params={"kind": "flaky"})
    assert job_ids(page.text) == {flaky.id}
    assert 'id="kind-filter" name="kind" value="flaky"' in page.text
    assert '<option value="fail">' in page.text  # the known kinds are offered
    cancelled = await svc.client.get("/dashboard/tenants/acme", params={"state": "cancelled"})
    assert job_ids(cancelled.text) == {failing.id}
    assert '<option value="cancelled" selected>' in cancelled.text
    both = await svc.client.get(
        "/dashboard/tenants/acme", params={"state": "scheduled", "kind": "fail"}
    )
    assert job_ids(both.text) == set()
    assert 'id="no-jobs">No jobs match the filter.<' in both.text

    record_ids = {job.id for job in records}
    first = await svc.client.get(
        "/dashboard/tenants/acme", params={"kind": "record", "state": "scheduled"}
    )
    assert len(job_ids(first.text)) == 50
    assert job_ids(first.text) <= record_ids
    assert "state=scheduled&amp;kind=record&amp;page=2" in first.text  # the pager keeps both
    second = await svc.client.get(
        "/dashboard/tenants/acme", params={"kind": "record", "state": "scheduled", "page": "2"}
    )
    assert job_ids(first.text) | job_ids(second.text) == record_ids


async def test_the_chart_shows_the_range_asked_for(
    make_service: ServiceFactory, backend: str
) -> None:
    svc: Svc = await make_service(backend, run_worker=False, tenants={"acme": "shared"})
    await login(svc)
    for _ in range(3):
        await svc.state.monitor.refresh()
    page = await svc.client.get("/dashboard/")
    recent = svc.state.settings.sample_interval * svc.state.settings.samples_kept
    assert f'data-span="{recent:.0f}"' in page.text
    assert 'data-range="recent" class="on"' in page.text
    day = await svc.client.get("/dashboard/", params={"range": "24h", "q": "ac"})
    assert 'data-span="86400"' in day.text
    assert ">last 24 h<" in day.text
    assert 'data-range="24h" class="on"' in day.text
    assert 'data-src="/dashboard/live?q=ac&amp;range=24h"' in day.text  # polls keep the range
    assert 'name="range" value="24h"' in day.text  # and so does a search
    assert 'href="/dashboard/?q=ac&amp;range=1h"' in day.text
    live = await svc.client.get("/dashboard/live", params={"range": "6h"})
    assert 'data-span="21600"' in live.text
    assert re.search(r'data-samples="[1-9]\d*"', live.text)  # this run's samples are on it


async def test_timestamps_are_utc_with_the_age_on_hover(
    make_service: ServiceFactory, backend: str
) -> None:
    svc: Svc = await make_service(backend, tenants={"acme": "shared"})
    job = await svc.ok(
        "POST", "/tenants/acme/jobs", 201, json={"kind": "fail", "payload": {"key": "k"}}
    )
    await svc.wait_for(
        lambda: svc.state.queue.admin.get_job("acme", job["id"]).state.value == "dead", "dead"
    )
    await login(svc)
    stamp = re.compile(
        r'<time datetime="(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z)" '
        r'title="(just now|\d+ (?:s|min) ago)">(\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ)</time>'
    )
    for path in (
        "/dashboard/",
        "/dashboard/dead",
        "/dashboard/tenants/acme",
        f"/dashboard/tenants/acme/jobs/{job['id']}",
    ):
        html = (await svc.client.get(path)).text
        found = stamp.findall(html)
        assert found, path
        for iso, _ago, shown in found:
            assert iso[:19].replace("T", " ") + "Z" == shown
        assert " UTC" not in html, path  # one form, the Z says it
        bare = re.findall(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d", re.sub(stamp, "", html))
        assert bare == [], (path, bare)  # every timestamp is in a <time> element
