"""A database blip at the wrong moment is an outage, not an "internal error".

Before running a job the worker re-reads the job's tenant from the catalog
(when its cache has expired). If the database drops the connection right
then, the job is recovered (retried later), but the worker reports it as
``internal error running job N`` at ERROR level with a full traceback, the
message meant for bugs in the worker itself. The fault tests on a real
server (``test_db_faults``) hit this now and then; this test pins it down
deterministically with an in-process worker on SQLite.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from tenantry import Tenant, Worker
from tenantry.queue import WorkerOptions
from tenantry.queue.drivers.sqlite import SqliteDriver
from tests.conftest import TenantryFactory
from tests.integration.faults.harness import JobBook
from tests.queue_app import registry

pytestmark = [pytest.mark.timeout(60)]


async def test_catalog_lookup_outage_is_not_logged_as_internal_error(
    make_tenantry: TenantryFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    tenantry = make_tenantry("sqlite")
    tenantry.create_tenant("blip_shared")
    book = JobBook(tenantry, ["blip_shared"])
    book.setup()
    book.enqueue(1, rng=random.Random(0), kinds=["record"])

    real_get = tenantry.catalog.get
    calls = 0

    def flaky_get(tenant_id: str, *, cached: bool = True) -> Tenant:
        nonlocal calls
        calls += 1
        if calls == 1:  # the connection breaks during the worker's first lookup
            raise OperationalError(
                "SELECT ... FROM tenantry_tenants",
                {},
                ConnectionError("server closed the connection"),
            )
        return real_get(tenant_id, cached=cached)

    def never_cached(tenant_id: str) -> Any:
        return None

    monkeypatch.setattr(tenantry.catalog, "get", flaky_get)
    monkeypatch.setattr(tenantry.catalog, "get_cached", never_cached)
    caplog.set_level(logging.INFO, logger="tenantry")

    worker = Worker(
        tenantry,
        registry,
        WorkerOptions(concurrency=2, poll_interval=0.05, lease_seconds=5),
    )
    task = asyncio.create_task(worker.run())
    try:
        deadline = time.monotonic() + 30
        while await asyncio.to_thread(book.completed) < 1:
            assert time.monotonic() < deadline, f"job never completed: {book.describe()}"
            assert not task.done(), "the worker stopped"
            await asyncio.sleep(0.1)
    finally:
        worker.stop()
        await asyncio.wait_for(task, 20)
        await tenantry.aclose()  # async engines are disposed on this loop

    assert calls >= 2, "the simulated outage was never hit"
    book.assert_exactly_once(lambda: caplog.text)  # recovered: ran once, in the end
    internal = [r.getMessage() for r in caplog.records if "internal error" in r.getMessage()]
    assert not internal, f"a database outage was reported as a worker bug: {internal}"


async def test_a_job_that_cannot_be_released_is_not_held_forever(
    make_tenantry: TenantryFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Catalog lookup and release both fail (database away): the job must come back.

    The worker has to stop holding it, so its lease expires and the rescuer
    returns it; were it still held, the heartbeat would renew the lease of a
    job nothing runs and it would stay ``running`` for good.
    """
    tenantry = make_tenantry("sqlite")
    tenantry.create_tenant("blip_shared")
    book = JobBook(tenantry, ["blip_shared"])
    book.setup()
    book.enqueue(1, rng=random.Random(0), kinds=["record"])

    outage = True
    real_get = tenantry.catalog.get
    real_release = SqliteDriver.release

    def broken() -> OperationalError:
        return OperationalError("...", {}, ConnectionError("database is away"))

    def flaky_get(tenant_id: str, *, cached: bool = True) -> Tenant:
        if outage:
            raise broken()
        return real_get(tenant_id, cached=cached)

    def flaky_release(self: SqliteDriver, conn: Any, leases: Any) -> set[int]:
        if outage:
            raise broken()
        return real_release(self, conn, leases)

    monkeypatch.setattr(tenantry.catalog, "get", flaky_get)
    monkeypatch.setattr(tenantry.catalog, "get_cached", lambda tenant_id: None)
    monkeypatch.setattr(SqliteDriver, "release", flaky_release)

    worker = Worker(
        tenantry,
        registry,
        WorkerOptions(
            concurrency=1,
            poll_interval=0.05,
            lease_seconds=1.0,
            heartbeat_interval=0.2,
            rescue_interval=0.2,
        ),
    )
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.sleep(0.5)  # claimed, lookup failed, release failed
        outage = False
        deadline = time.monotonic() + 20
        while await asyncio.to_thread(book.completed) < 1:
            assert time.monotonic() < deadline, f"job stuck: {book.describe()}"
            await asyncio.sleep(0.1)
    finally:
        worker.stop()
        await asyncio.wait_for(task, 20)
        await tenantry.aclose()
    assert worker.stats.rescued >= 1
