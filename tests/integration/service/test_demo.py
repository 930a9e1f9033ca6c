"""The catalogue demo: the app's transaction, its job, and ``tenantry demo --once``."""

from __future__ import annotations

import asyncio
import importlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from tenantry import Tenantry, tenant_context
from tenantry.demo import DemoBase, DemoProduct, ProductAudit, registry
from tenantry.demo.app import create_catalogue_app
from tenantry.errors import QueueUnavailableError
from tenantry.queue import JobState, Queue, Worker, WorkerOptions
from tests.conftest import BACKENDS, make_config
from tests.integration.queue.support import running, wait_until


@pytest.fixture
async def catalogue(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str
) -> AsyncIterator[tuple[Tenantry, Queue, httpx.AsyncClient]]:
    """The catalogue app on the demo's own tables, three tenants with two products each."""
    t = Tenantry(make_config(backend, request, tmp_path), tenant_metadata=DemoBase.metadata)
    for tid, mode in (("acme", "shared"), ("globex", "shared"), ("initech", "database")):
        t.create_tenant(tid, isolation=mode)
        with tenant_context(tid), t.session() as s:
            s.add_all([DemoProduct(name=f"{tid}: {n}", price_cents=100) for n in ("a", "b")])
            s.commit()
    queue = Queue(t, registry)
    queue.setup()
    app = create_catalogue_app(t, queue)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:8001"
    ) as client:
        yield t, queue, client
    await t.aclose()


def _ids(t: Tenantry, tenant_id: str) -> list[int]:
    with tenant_context(tenant_id), t.session() as s:
        return sorted(s.scalars(select(DemoProduct.id)))


def _audit_count(t: Tenantry, tenant_id: str) -> int:
    with tenant_context(tenant_id), t.session() as s:
        return int(s.scalar(select(func.count()).select_from(ProductAudit)) or 0)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_an_update_and_its_job_commit_together(
    catalogue: tuple[Tenantry, Queue, httpx.AsyncClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    t, queue, client = catalogue
    acme, globex = _ids(t, "acme"), _ids(t, "globex")
    by_header = {"X-Tenant-ID": "acme"}

    listed = await client.get("/products", headers={"Host": "globex.localhost:8001"})
    assert [p["id"] for p in listed.json()] == globex
    response = await client.put(
        f"/products/{acme[0]}", json={"price_cents": 250}, headers=by_header
    )
    assert response.status_code == 200, response.text
    job = queue.admin.get_job("acme", response.json()["job_id"])
    assert job.kind == "product_update"
    assert job.payload["new_price_cents"] == 250
    assert job.payload["change_id"] == response.json()["change_id"]
    # Another tenant's product is not found, and nothing is enqueued for it.
    foreign = await client.put(
        f"/products/{acme[0]}", json={"price_cents": 1}, headers={"X-Tenant-ID": "globex"}
    )
    assert foreign.status_code == 404
    assert sum(queue.admin.count_jobs(tenant_id="globex").values()) == 0

    # If the enqueue fails, the product change is rolled back with it.
    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise QueueUnavailableError()

    monkeypatch.setattr(queue, "aenqueue", broken)
    with pytest.raises(QueueUnavailableError):
        await client.put(f"/products/{acme[1]}", json={"price_cents": 999}, headers=by_header)
    with tenant_context("acme"), t.session() as s:
        assert s.get(DemoProduct, acme[1]).price_cents == 100  # type: ignore[union-attr]
    assert sum(queue.admin.count_jobs(tenant_id="acme").values()) == 1


@pytest.mark.parametrize("backend", BACKENDS)
async def test_the_handler_records_each_change_once(
    catalogue: tuple[Tenantry, Queue, httpx.AsyncClient],
) -> None:
    t, queue, client = catalogue
    pid = _ids(t, "initech")[0]
    key = t.api_keys.issue("initech").key
    headers = {"Authorization": f"Bearer {key}"}
    first = await client.put(f"/products/{pid}", json={"name": "initech: renamed"}, headers=headers)
    assert first.status_code == 200
    cursed = await client.put(f"/products/{pid}", json={"name": "cursed"}, headers=headers)
    assert cursed.status_code == 200
    # The same change enqueued again (a client retry, say) is recorded once.
    again = queue.admin.get_job("initech", first.json()["job_id"])
    with tenant_context("initech"):
        queue.enqueue("product_update", again.payload)

    worker = Worker(t, registry, WorkerOptions(poll_interval=0.05, concurrency=2))
    async with running(worker):
        await wait_until(
            lambda: (
                queue.admin.count_jobs(tenant_id="initech")["completed"] == 2
                and queue.admin.count_jobs(tenant_id="initech")["dead"] == 1
            ),
            what="jobs finished",
        )
    assert _audit_count(t, "initech") == 1
    audit = (await client.get("/audit", headers=headers)).json()
    assert [(a["old_name"], a["new_name"]) for a in audit] == [("initech: a", "initech: renamed")]
    dead = queue.admin.list_jobs(tenant_id="initech", state=JobState.DEAD)[0]
    assert [e["type"] for e in dead.errors] == ["SearchIndexError"] * 3


def test_demo_once_prints_what_the_database_holds(tmp_path: Path) -> None:
    data = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTRY_")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tenantry.cli.main",
            "demo",
            "--data-dir",
            str(data),
            "--once",
            "--port",
            "0",
            "--app-port",
            "0",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    out = proc.stdout
    assert re.search(r"dashboard\s+http://127\.0\.0\.1:\d+/dashboard/", out)
    assert re.search(r"catalogue app http://127\.0\.0\.1:\d+/docs", out)
    summary = out.split("Jobs processed per tenant")[1]
    printed = {}
    for line in summary.splitlines():
        cells = [c.strip() for c in line.split("│")]
        if len(cells) == 9 and cells[1] in {"acme", "globex", "initech"}:
            printed[cells[1]] = (int(cells[5]), int(cells[6]), int(cells[7]))
    assert set(printed) == {"acme", "globex", "initech"}

    def audit_rows(db: Path, tenant: str) -> int:
        with sqlite3.connect(db) as conn:
            row = conn.execute(
                "SELECT count(*) FROM demo_product_audit WHERE tenant_id = ?", (tenant,)
            ).fetchone()
        return int(row[0])

    def jobs(db: Path, tenant: str, state: str) -> int:
        with sqlite3.connect(db) as conn:
            row = conn.execute(
                "SELECT count(*) FROM tenantry_jobs WHERE tenant_id = ? AND state = ?",
                (tenant, state),
            ).fetchone()
        return int(row[0])

    for tenant, (completed, dead, audited) in printed.items():
        db = data / ("default_tenants/initech.db" if tenant == "initech" else "default.db")
        assert jobs(db, tenant, "completed") == completed > 0
        assert jobs(db, tenant, "dead") == dead
        assert audit_rows(db, tenant) == audited == completed
    assert printed["acme"][1] == 1  # the refused rename
    # The isolation checker finds nothing wrong with what the demo set up.
    doctor = subprocess.run(
        [sys.executable, "-m", "tenantry.cli.main", "doctor"],
        cwd=tmp_path,
        env={**env, "TENANTRY_DATA_DIR": str(data)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert doctor.stdout == "no findings: 1 stores, 3 tenants checked\n"


async def test_the_example_module_serves_the_app(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [k for k in os.environ if k.startswith("TENANTRY_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("TENANTRY_DATA_DIR", str(tmp_path / "data"))
    sys.modules.pop("examples.catalogue.app", None)
    module = importlib.import_module("examples.catalogue.app")
    try:
        t: Tenantry = module.tenantry
        assert t.tenant_metadata is DemoBase.metadata
        await asyncio.to_thread(t.create_tenant, "acme")
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=module.app), base_url="http://test"
        ) as client:
            assert (await client.get("/products", headers={"X-Tenant-ID": "acme"})).json() == []
            assert (await client.get("/products")).status_code == 400  # no tenant named
    finally:
        await module.tenantry.aclose()
        sys.modules.pop("examples.catalogue.app", None)


def test_ctrl_c_stops_the_demo_cleanly(tmp_path: Path) -> None:
    """Ctrl-C while jobs flow: the worker stops first, then a consistent summary, exit 0."""
    data = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTRY_")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tenantry.cli.main",
            "demo",
            "--data-dir",
            str(data),
            "--port",
            "0",
            "--app-port",
            "0",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    killer = threading.Timer(180, proc.kill)
    killer.start()
    try:
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if "press Ctrl-C to stop" in line:
                break
        else:
            pytest.fail("the demo never started serving: " + "".join(seen))
        # Let the trickle of updates and the worker run, then interrupt them mid-flow.
        time.sleep(3)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        killer.cancel()
        if proc.poll() is None:
            proc.kill()
    out = "".join(seen) + out
    assert proc.returncode == 0, out + err
    assert "check failed" not in out + err
    assert "Traceback" not in err
    assert "interrupted" in out
    summary = out.split("Jobs processed per tenant")[1]
    counted = 0
    for line in summary.splitlines():
        cells = [c.strip() for c in line.split("│")]
        if len(cells) == 9 and cells[1] in {"acme", "globex", "initech"}:
            completed, audited = int(cells[5]), int(cells[7])
            assert completed == audited > 0, line
            counted += 1
    assert counted == 3
