"""The dashboard's sampler: a cancelled reading never leaves a connection behind."""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest
from sqlalchemy.engine import make_url

from tenantry.queue import JobRegistry, Queue
from tenantry.service.monitor import Monitor
from tests.conftest import TenantryFactory

pytestmark = pytest.mark.postgres


async def test_a_cancelled_refresh_waits_for_its_query_to_hand_the_connection_back(
    make_tenantry: TenantryFactory,
) -> None:
    """The service cancels the sampler, then closes the pools.

    The reading runs on a thread that cancelling does not stop. A lock held on
    the jobs table keeps its query waiting, as a slow database would: the
    cancelled refresh must wait for it, or its connection goes back to a pool
    already closed and is never closed itself.
    """
    tenantry = make_tenantry("postgresql")
    tenantry.create_tenant("acme")
    queue = Queue(tenantry, JobRegistry())
    queue.setup()
    monitor = Monitor(queue, interval=1.0, keep=10, window=60.0)
    await monitor.refresh()  # connected and warm: the next reading only queries
    url = make_url(tenantry.config.stores["default"].url)
    locker = psycopg.connect(
        host=url.host, port=url.port or 5432, user=url.username, dbname=url.database
    )
    try:
        locker.execute("LOCK TABLE tenantry.tenantry_jobs IN ACCESS EXCLUSIVE MODE")
        task = asyncio.create_task(monitor.refresh())
        deadline = time.monotonic() + 10
        while True:
            waiting = locker.execute(
                "SELECT count(*) FROM pg_locks WHERE NOT granted"
                " AND relation = 'tenantry.tenantry_jobs'::regclass"
            ).fetchone()
            if waiting and waiting[0]:
                break
            assert time.monotonic() < deadline, "the reading never reached the jobs table"
            await asyncio.sleep(0.02)
        asyncio.get_running_loop().call_later(0.3, locker.rollback)  # the lock goes
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert time.monotonic() - started >= 0.25  # it waited for the query
        pool = tenantry.default_store.admin_engine().pool
        assert pool.checkedout() == 0  # type: ignore[attr-defined]
    finally:
        locker.close()
