"""Maintenance: stage due jobs and rescue expired leases, one transaction per visit."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from tenantry.queue.registry import JobRegistry
from tenantry.queue.sources import JobSource
from tenantry.queue.worker.maintenance import Maintenance, RescueExpired, StageDue
from tenantry.queue.worker.observe import Report
from tenantry.queue.worker.options import WorkerOptions
from tenantry.queue.worker.state import Runtime, WorkerState
from tenantry.queue.worker.threads import WorkerThreads
from tenantry.tenancy.facade import Tenancy


@dataclass
class _Driver:
    due: int = 0
    expired: int = 0
    calls: list[str] = field(default_factory=list)

    def stage_due(self, conn: Any) -> int:
        self.calls.append("stage")
        return self.due

    def rescue_expired(self, conn: Any) -> list[tuple[int, str]]:
        self.calls.append("rescue")
        return [(i, "available") for i in range(self.expired)]


class _Conn:
    async def run_sync(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(self, *args)


@dataclass
class _Source:
    key: str
    tenant_id: str | None = None
    driver: _Driver = field(default_factory=_Driver)
    broken: bool = False
    transactions: int = 0

    def async_engine(self) -> _Source:
        return self

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[_Conn]:
        if self.broken:
            raise OSError("connection refused")
        self.transactions += 1
        yield _Conn()


def _maintenance(*sources: _Source, **options: Any) -> tuple[Maintenance, Runtime]:
    opts = WorkerOptions(**options)
    state = WorkerState(opts)
    state.sources = cast(list[JobSource], list(sources))
    rt = Runtime(
        tenancy=cast(Tenancy, None),
        registry=JobRegistry(),
        options=opts,
        state=state,
        report=Report(None),
        threads=WorkerThreads(1),
        worker_id="test",
        queues=["default"],
        tenants=None,
    )
    return Maintenance(rt, [StageDue(), RescueExpired(rt)]), rt


async def test_both_services_share_one_transaction_and_rescue_keeps_its_own_interval() -> None:
    store = _Source("default")
    store.driver.expired = 2
    maintenance, rt = _maintenance(store, rescue_interval=5.0)
    await maintenance.visit_all(0.0)  # the first visit starts the rescue clock
    await maintenance.visit_all(1.0)
    await maintenance.visit_all(5.0)
    assert store.transactions == 3
    assert store.driver.calls == ["stage", "stage", "stage", "rescue"]
    assert rt.report.stats.rescued == 2
    assert rt.report.signals.rescued.count == 2
    assert rt.state.wake.is_set()  # rescued jobs are there to claim


async def test_an_idle_tenant_database_is_visited_less_and_less_often() -> None:
    tenant_db = _Source("default/acme", tenant_id="acme")
    store = _Source("default")
    maintenance, _ = _maintenance(tenant_db, store, poll_interval=0.1, idle_poll_max=0.4)
    for step in range(20):
        await maintenance.visit_all(step * 0.1)
    assert store.transactions == 20  # a store database: every tick
    assert tenant_db.transactions < 10
    tenant_db.driver.due = 1  # found work: visited every tick again
    before = tenant_db.transactions
    for step in range(20, 30):
        await maintenance.visit_all(step * 0.1 + 1.0)
    assert tenant_db.transactions - before >= 8


async def test_a_failing_source_is_logged_once_and_the_others_still_visited(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broken = _Source("away", broken=True)
    fine = _Source("default")
    maintenance, _ = _maintenance(broken, fine)
    with caplog.at_level(logging.WARNING, logger="tenantry.queue.worker.maintenance"):
        for step in range(3):
            await maintenance.visit_all(float(step))
    assert fine.transactions == 3
    failures = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
    assert failures == ["maintenance on away failed: OSError: connection refused"]
