"""The dashboard in a real headless Chromium, against a real ``tenantry serve`` process.

Debian's ``/usr/bin/chromium`` is driven by Playwright (its own browser
download is not used). The service runs as the installed CLI would run it,
with the test's job registry and an embedded worker; the test reads and writes
the same SQLite database directly to prepare jobs and to check what the clicks
did. With ``CI=true`` a missing Chromium fails the run (``.ci/run`` installs
it); locally the test is skipped with the reason.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest
from sqlalchemy import select

from tenantry import JobState, Tenantry, TenantryConfig, tenant_context
from tenantry.queue import Queue
from tests.conftest import IN_CI
from tests.integration.service.conftest import ADMIN_TOKEN
from tests.integration.service.jobs import registry
from tests.models import Note

if TYPE_CHECKING:
    from playwright.sync_api import Page

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
REPO = Path(__file__).resolve().parents[3]

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def chromium() -> Path:
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing (apt-get install chromium)"
        if IN_CI:
            pytest.fail(f"CI=true and {message}: .ci/run should have installed it", pytrace=False)
        pytest.skip(message)
    return CHROMIUM


@dataclass
class Service:
    url: str
    t: Tenantry
    queue: Queue
    log: Path


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    """``tenantry serve`` on a SQLite file this test also opens, with two tenants."""
    url = f"sqlite:///{tmp_path / 'data' / 'main.db'}"
    t = Tenantry(TenantryConfig.single(url))
    t.create_tenant("acme", name="Acme Corporation", isolation="shared")
    t.create_tenant("globex", name="Globex", isolation="database")
    queue = Queue(t, registry)
    queue.setup()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTRY_")}
    env.update(TENANTRY_DATABASE_URL=url, TENANTRY_ADMIN_TOKEN=ADMIN_TOKEN)
    log = tmp_path / "service.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tenantry.cli.main",
                "--models",
                "tests.models:TenantBase",
                "serve",
                "--app",
                "tests.integration.service.jobs:registry",
                "--port",
                "0",
                "--poll",
                "0.1",
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        found = re.search(r"tenantry service on (http://\S+)", first)
        assert found, f"no URL printed: {first!r}\n{log.read_text()}"
        yield Service(found.group(1), t, queue, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        finally:
            if proc.stdout is not None:
                proc.stdout.close()
            t.close()
    assert proc.returncode == 0, log.read_text()


def test_dashboard_login_overview_dead_letters_and_retry(
    chromium: Path, service: Service, tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    t, queue = service.t, service.queue
    for i in range(5):
        with tenant_context("acme"):
            queue.enqueue("record", {"key": f"warm-{i}"})
    with tenant_context("globex"):
        dead_id = queue.enqueue("flaky", {"key": "k1"}).id
    wait_until(lambda: queue.admin.get_job("globex", dead_id).state is JobState.DEAD, "a dead job")

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(20_000)

            # Not logged in: the dashboard sends the browser to the login form.
            page.goto(f"{service.url}/dashboard/")
            expect(page).to_have_url(re.compile(r"/dashboard/login\?next="))
            page.fill("#token", "wrong-token-wrong-token")
            page.click("button[type=submit]")
            expect(page.locator("#login-error")).to_contain_text("not the admin token")
            page.fill("#token", ADMIN_TOKEN)
            page.click("button[type=submit]")
            expect(page).to_have_url(f"{service.url}/dashboard/")
            cookies = {c["name"]: c for c in page.context.cookies()}
            assert cookies["tenantry_session"]["httpOnly"] is True
            assert cookies["tenantry_session"]["sameSite"] == "Strict"

            # Tenants with status and depth; the overview updates itself.
            acme_row = page.locator("#tenants tr[data-tenant=acme]")
            expect(acme_row).to_contain_text("Acme Corporation")
            expect(acme_row.locator(".badge")).to_have_text("active")
            expect(page.locator("#tenants tr[data-tenant=globex]")).to_contain_text("database")
            page.evaluate("window.__sameDocument = true")
            seq = int(page.locator("#seq").inner_text())
            with tenant_context("acme"):
                queue.enqueue_many("record", [{"key": f"late-{i}"} for i in range(7)], delay=3600)
            expect(acme_row.locator(".depth-available")).to_have_text("0")
            expect(page.locator("#tenants tr[data-tenant=acme] td").nth(7)).to_have_text(
                "7", timeout=20_000
            )  # the scheduled column, filled in by a poll
            assert int(page.locator("#seq").inner_text()) > seq
            assert page.evaluate("window.__sameDocument") is True  # no reload: a live update
            expect(page.locator("#throughput-chart polyline")).to_have_count(1)
            page.screenshot(path=str(tmp_path / "overview.png"), full_page=True)

            # The dead-letter list shows the error and its traceback.
            page.click("text=Dead letters")
            row = page.locator(f"#dead-jobs tr[data-job='globex/{dead_id}']")
            expect(row.locator(".error-message")).to_have_text(
                "DownstreamError: downstream refused <k1> & said no"
            )
            row.locator("summary").click()
            expect(row.locator("pre.traceback")).to_contain_text("raise DownstreamError")
            page.screenshot(path=str(tmp_path / "dead.png"), full_page=True)

            # Fix the downstream system, click Retry: requeued, then run by the worker.
            with tenant_context("globex"), t.session() as s:
                s.add(Note(body="allow:k1"))
                s.commit()
            before = queue.admin.get_job("globex", dead_id)
            row.locator("button.retry").click()
            expect(page.locator("#notice")).to_have_text(f"Job {dead_id} was requeued.")
            after = queue.admin.get_job("globex", dead_id)
            assert after.state is not JobState.DEAD or after.attempt > before.attempt
            assert after.max_attempts == before.max_attempts + 1
            wait_until(
                lambda: queue.admin.get_job("globex", dead_id).state is JobState.COMPLETED,
                "the retried job completed",
            )
            with tenant_context("globex"), t.session() as s:
                assert "done:k1" in set(s.scalars(select(Note.body)))
            page.reload()
            expect(page.locator("#no-dead")).to_be_visible()

            # Per-tenant drill-down shows the job as completed.
            page.goto(f"{service.url}/dashboard/tenants/globex?state=completed")
            expect(page.locator("#tenant-status")).to_have_text("active")
            expect(page.locator(f"#jobs a[href$='/jobs/{dead_id}']")).to_be_visible()
        finally:
            browser.close()


PHONE_WIDTH, PHONE_HEIGHT = 375, 740


def overflow(page: Page) -> int:
    """How many CSS pixels the page is wider than the window (0: no horizontal scrolling)."""
    width = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert isinstance(width, int)
    return width


def test_search_phone_layout_and_offline_api_docs(
    chromium: Path, service: Service, tmp_path: Path
) -> None:
    from playwright.sync_api import Route, expect, sync_playwright

    queue = service.queue
    for i in range(3):
        service.t.create_tenant(f"initech_{i}", name=f"Initech branch {i}", isolation="shared")
    with tenant_context("globex"):
        dead_id = queue.enqueue("flaky", {"key": "a-key-with-no-spaces-" + "x" * 80}).id
    wait_until(lambda: queue.admin.get_job("globex", dead_id).state is JobState.DEAD, "a dead job")
    blocked: list[str] = []
    local = urlsplit(service.url).hostname

    def offline(route: Route) -> None:
        """Anything but the service itself is unreachable, as on a network without Internet."""
        if urlsplit(route.request.url).hostname == local:
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort("internetdisconnected")

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": PHONE_WIDTH, "height": PHONE_HEIGHT})
            context.route("**/*", offline)
            page = context.new_page()
            page.set_default_timeout(20_000)
            page.goto(f"{service.url}/dashboard/login")
            page.fill("#token", ADMIN_TOKEN)
            page.click("button[type=submit]")
            expect(page).to_have_url(f"{service.url}/dashboard/")
            rows = page.locator("#tenants tbody tr[data-tenant]")
            expect(rows).to_have_count(5)

            # The search narrows the list, and the live updates keep it narrowed.
            page.fill("#q", "INITECH")
            page.press("#q", "Enter")
            expect(page).to_have_url(re.compile(r"/dashboard/\?q=INITECH$"))
            expect(rows).to_have_count(3)
            expect(page.locator("#tenants tr[data-tenant=acme]")).to_have_count(0)
            seq = page.locator("#seq").inner_text()
            expect(page.locator("#seq")).not_to_have_text(seq)  # a poll has replaced the table
            expect(rows).to_have_count(3)
            page.fill("#q", "branch 2")
            page.press("#q", "Enter")
            expect(rows).to_have_count(1)
            expect(rows.first).to_have_attribute("data-tenant", "initech_2")

            # A phone: the page itself never scrolls sideways, wide tables scroll in their box.
            assert page.evaluate("window.innerWidth") == PHONE_WIDTH
            for path in (
                "/dashboard/",
                "/dashboard/?range=24h",
                "/dashboard/dead",
                "/dashboard/tenants/globex",
                f"/dashboard/tenants/globex/jobs/{dead_id}",
            ):
                page.goto(f"{service.url}{path}")
                expect(page.locator("main h1")).to_be_visible()
                assert overflow(page) <= 0, path
            page.goto(f"{service.url}/dashboard/tenants/globex")
            table_box = page.locator("#jobs").evaluate(
                "t => [t.parentElement.scrollWidth, t.parentElement.clientWidth]"
            )
            assert table_box[0] > table_box[1]  # the jobs table scrolls inside its box
            page.screenshot(path=str(tmp_path / "phone-tenant.png"), full_page=True)

            # The API docs render with the network cut off, reached from the nav.
            page.goto(f"{service.url}/dashboard/")
            page.click("header nav >> text=API docs")
            expect(page).to_have_url(f"{service.url}/docs")
            expect(page.locator(".swagger-ui .info .title")).to_contain_text("tenantry service")
            expect(page.locator(".opblock-summary-path").first).to_be_visible()
            expect(
                page.locator(".opblock-summary-path[data-path='/api/v1/tenants']").first
            ).to_be_visible()
            page.screenshot(path=str(tmp_path / "docs.png"))
            assert blocked == [], blocked
        finally:
            browser.close()
