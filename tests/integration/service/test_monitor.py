"""The dashboard's sampler: a cancelled reading never leaves a connection behind."""

from __future__ import annotations

import asyncio

import pytest

from tenantry.queue import JobRegistry, Queue
from tenantry.service.monitor import Monitor
from tests.conftest import TenantryFactory
from tests.integration.locks import TableLock

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
    monitor = Monitor(queue.admin, interval=1.0, keep=10, window=60.0)
    await monitor.refresh()  # connected and warm: the next reading only queries
    with TableLock(tenantry.config.stores["default"].url, "tenantry", "tenantry_jobs") as lock:
        task = asyncio.create_task(monitor.refresh())
        assert await lock.cancel_while_held(task, 0.3) >= 0.25  # it waited for the query
    pool = tenantry.default_store.admin_engine().pool
    assert pool.checkedout() == 0  # type: ignore[attr-defined]
