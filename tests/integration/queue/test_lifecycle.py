"""The queue follows the tenant life cycle while a worker runs, in every isolation mode.

* Suspending a tenant stops its starts at once; its jobs stay ``available``,
  untouched; resuming runs each exactly once.
* Deleting a tenant cancels its unfinished jobs (they never run) and voids the
  outcome of the one that is running.
* A worker serves tenants created after it started.
* Control rows that drifted from the catalog are repaired by
  ``QueueAdmin.sync_controls()`` and by the worker's periodic full sync.
"""

from __future__ import annotations

import asyncio
import gc
import os
import time

import pytest
from sqlalchemy import func, select, text

from tenantry.errors import TenantNotFoundError
from tenantry.queue import JobState
from tenantry.queue.schema import jobs_table as J
from tests.conftest import ALL_CASES, TenantryFactory
from tests.integration.queue.support import CASES, Env, EnvFactory, running, wait_until
from tests.integration.queue.tenant_support import (
    JOB_TABLE_CASES,
    Timeline,
    bounded_run,
    compared,
    control_ids,
    control_row,
    delete_control,
    insert_control,
    set_control,
    timeline_registry,
    wanted_control,
)


@JOB_TABLE_CASES
@pytest.mark.timing
async def test_suspension_stops_starts_and_leaves_jobs_untouched_until_resumed(
    make_env: EnvFactory, backend: str, mode: str
) -> None:
    timeline = Timeline()
    env = make_env(backend, mode, timeline_registry(timeline))
    env.enqueue_many("acme", "work", [{"sleep": 0.05}] * 30)
    worker = env.worker(concurrency=2, prefetch=0, suspended_retry=0.5)
    async with running(worker):
        await wait_until(lambda: timeline.started("acme") >= 4, 20, what="acme under way")
        await asyncio.to_thread(env.t.suspend_tenant, "acme")
        suspended_at = time.monotonic()
        other = await asyncio.to_thread(env.enqueue, "globex", "work", {"n": 1})
        await wait_until(lambda: env.state("globex", other.id) is JobState.COMPLETED, 10)
        await wait_until(lambda: env.counts("acme")["running"] == 0, 10, what="in-flight done")
        # Jobs claimed before the suspension were put back for suspended_retry:
        # once they are due again, give the claim loop chances to (wrongly) start them.
        await wait_until(
            lambda: env.counts("acme")["scheduled"] == 0, 10, what="postponed jobs due again"
        )
        await worker.signals.claim_rounds.more(5, timeout=10)
        # A job claimed just before the suspension may start just after it; none later.
        late = [s for s in timeline.snapshot() if s.tenant_id == "acme"]
        late = [s for s in late if s.start > suspended_at + 0.3]
        assert late == []
        started = timeline.started("acme")
        assert started < 30
        waiting = [j for j in env.queue.admin.list_jobs(tenant_id="acme", limit=100)]
        waiting = [j for j in waiting if j.state is not JobState.COMPLETED]
        assert len(waiting) == 30 - started
        for job in waiting:
            assert job.state in (JobState.AVAILABLE, JobState.SCHEDULED), job
            assert job.attempt == 0
            assert job.errors == []
            assert job.worker_id is None
        # Not claimed and put back: the claim skips the paused tenant. Only a
        # claim that raced the suspension (at most one per free slot) is put back.
        assert worker.stats.postponed <= 2
        await asyncio.to_thread(env.t.resume_tenant, "acme")
        await wait_until(lambda: env.counts("acme")["completed"] == 30, 20, what="all of acme")
    assert timeline.calls().most_common(1)[0][1] == 1
    assert all(j.attempt == 1 for j in env.queue.admin.list_jobs(tenant_id="acme", limit=100))


def _rows_left(env: Env, tenant_id: str, source_key: str) -> int:
    source = next(s for s in env.queue.admin.sources() if s.key == source_key)
    with source.engine(write=False).connect() as conn:
        query = select(func.count()).select_from(J).where(J.c.tenant_id == tenant_id)
        return int(conn.scalar(query) or 0)


def _database_gone(env: Env, name: str) -> bool:
    if env.t.default_store.is_postgres:
        with env.t.default_store.admin_engine().connect() as conn:
            found = conn.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}
            ).first()
        return found is None
    return not os.path.exists(name)


@CASES
async def test_deleting_a_tenant_cancels_its_waiting_jobs_before_they_run(
    make_env: EnvFactory, backend: str, mode: str
) -> None:
    timeline = Timeline()
    env = make_env(backend, mode, timeline_registry(timeline))
    source_key = env.source("globex").key
    env.enqueue_many("globex", "work", [{"n": i} for i in range(10)])
    env.enqueue_many("globex", "work", [{"n": i} for i in range(3)], delay=0.5)
    env.t.suspend_tenant("globex")  # nothing of globex starts before the delete
    worker = env.worker(refresh_interval=0.2)
    async with running(worker):
        await worker.signals.claim_rounds.more(3, timeout=10)
        await asyncio.to_thread(env.t.delete_tenant, "globex")
        job = await asyncio.to_thread(env.enqueue, "acme", "work", {"n": 1})
        await wait_until(lambda: env.state("acme", job.id) is JobState.COMPLETED, 10)
        await asyncio.sleep(0.7)  # past the delayed jobs' time
    assert timeline.started("globex") == 0
    assert "globex" not in worker.tenant_stats
    assert worker.stats.dead == 0
    with pytest.raises(TenantNotFoundError):
        env.t.get_tenant("globex")
    if mode != "database":
        assert _rows_left(env, "globex", source_key) == 0
    gc.collect()  # any connection left to a dropped database warns now, not in another test


# SQLite database mode once left an empty file behind here: the worker kept
# polling the deleted tenant's path until its next refresh, and opening the
# path created the file. Tenant database files now open with mode=rw.
RECREATE_CASES = ALL_CASES


@pytest.mark.parametrize(("backend", "mode"), RECREATE_CASES)
async def test_a_tenant_deleted_while_a_worker_runs_can_be_created_again(
    make_env: EnvFactory, backend: str, mode: str
) -> None:
    timeline = Timeline()
    env = make_env(backend, mode, timeline_registry(timeline))
    db_name = env.t.default_store.tenant_database_name("globex")
    env.enqueue_many("globex", "work", [{"n": i} for i in range(3)])
    worker = env.worker(refresh_interval=0.5)
    async with running(worker):
        await wait_until(
            lambda: env.counts("globex")["completed"] == 3, 10, what="globex's jobs done"
        )
        await asyncio.to_thread(env.t.delete_tenant, "globex")
        # A refresh that began before the deletion may miss it; the next one does not.
        await worker.signals.refreshes.more(2, timeout=10)
        if mode == "database":
            assert _database_gone(env, db_name)
        await asyncio.to_thread(env.t.create_tenant, "globex", isolation=mode)
        assert env.total("globex") == 0
        job = await asyncio.to_thread(env.enqueue, "globex", "work", {"n": 9})
        await wait_until(lambda: env.state("globex", job.id) is JobState.COMPLETED, 10)
    gc.collect()


# Database mode: the dropped database takes the rows along; the worker, at its
# next refresh, gives up the jobs of a source that is gone (Leases.abandon).
DELETE_CASES = ALL_CASES


@pytest.mark.parametrize(("backend", "mode"), DELETE_CASES)
async def test_deleting_a_tenant_voids_the_job_it_is_running(
    make_env: EnvFactory, backend: str, mode: str
) -> None:
    timeline = Timeline()
    env = make_env(backend, mode, timeline_registry(timeline))
    # The hold ends only when told its lease is lost (or after 30 s): the delete
    # and the worker's next refresh may take seconds on a loaded machine.
    holding = env.enqueue("globex", "hold", {"sleep": 30.0}, priority=10)
    env.enqueue_many("globex", "work", [{"n": i} for i in range(10)])
    # One slot, no prefetch: the hold job runs, the others wait unclaimed.
    worker = env.worker(
        concurrency=1, prefetch=0, heartbeat_interval=0.2, refresh_interval=0.2, shutdown_grace=1
    )
    async with bounded_run(worker, stop_within=4.0):
        await wait_until(lambda: timeline.started("globex") == 1, 20, what="the hold job")
        assert timeline.job_ids("globex") == [holding.id]
        await asyncio.to_thread(env.t.delete_tenant, "globex")
        await wait_until(
            lambda: all(s.end is not None for s in timeline.snapshot()), 20, what="hold to end"
        )
        assert timeline.snapshot()[0].lease_lost, "the handler was not told its lease is gone"
        await wait_until(lambda: worker.stats.lost == 1, 4, what="the outcome voided")
        assert worker.stats.completed == 0
        job = await asyncio.to_thread(env.enqueue, "acme", "work", {"n": 1})
        await wait_until(lambda: env.state("acme", job.id) is JobState.COMPLETED, 10)
    assert timeline.job_ids("globex") == [holding.id]  # nothing else of globex ever ran
    assert worker.tenant_stats["globex"].completed == 0
    assert worker.stats.completed == 1  # acme's
    gc.collect()


async def test_a_worker_stops_although_an_acknowledgement_cannot_be_written(
    make_env: EnvFactory,
) -> None:
    timeline = Timeline()
    env = make_env("sqlite", "database", timeline_registry(timeline))
    env.enqueue("globex", "work", {"sleep": 1.0})
    worker = env.worker(shutdown_grace=1.0)
    async with bounded_run(worker, stop_within=4.0):
        await wait_until(lambda: timeline.started("globex") == 1, 20, what="globex's job")
        await asyncio.to_thread(env.t.delete_tenant, "globex")
        await wait_until(lambda: timeline.snapshot()[0].end is not None, 5, what="job to end")
        await asyncio.sleep(1.0)  # its acknowledgement fails, and is retried
    gc.collect()


@CASES
async def test_a_worker_serves_tenants_created_after_it_started(
    make_env: EnvFactory, backend: str, mode: str
) -> None:
    timeline = Timeline()
    env = make_env(backend, mode, timeline_registry(timeline), ("acme",))
    worker = env.worker(refresh_interval=0.2)
    async with running(worker):
        await asyncio.to_thread(
            env.t.create_tenant, "newco", isolation=mode, settings={"queue": {"weight": 2}}
        )
        made = await asyncio.to_thread(env.enqueue_many, "newco", "work", [{"n": 1}] * 3)
        await wait_until(
            lambda: all(env.state("newco", j.id) is JobState.COMPLETED for j in made),
            10,
            what="the new tenant's jobs",
        )
    assert worker.tenant_stats["newco"].completed == 3
    assert compared(control_row(env, "newco")) == wanted_control(weight=2)


async def test_a_refresh_sees_a_weight_changed_in_another_process(
    make_env: EnvFactory, make_tenantry: TenantryFactory
) -> None:
    """The refresh re-reads only changed catalog entries: a change made elsewhere
    (nothing invalidated here) is one of them, and the weight follows it."""
    env = make_env("postgresql", "shared", timeline_registry(Timeline()), ("acme", "globex"))
    worker = env.worker(refresh_interval=0.2)
    async with running(worker):
        synced = worker.catalog_sync
        await wait_until(lambda: synced.weights.get("acme") == 1, 10, what="the first refresh")
        unchanged = synced.listed["globex"]
        other = make_tenantry("postgresql", env.t.config)
        await asyncio.to_thread(other.update_tenant, "acme", settings={"queue": {"weight": 4}})
        await wait_until(lambda: synced.weights.get("acme") == 4, 10, what="the new weight")
        assert synced.listed["globex"] is unchanged  # not re-read
        assert synced.weights["globex"] == 1


async def test_without_a_refresh_a_new_tenant_database_is_not_served(
    make_env: EnvFactory,
) -> None:
    """The contrast: the refresh is what finds a new database-per-tenant tenant."""
    timeline = Timeline()
    env = make_env("sqlite", "database", timeline_registry(timeline), ("acme",))
    worker = env.worker(refresh_interval=3600)
    async with running(worker):
        await asyncio.to_thread(env.t.create_tenant, "newco", isolation="database")
        made = await asyncio.to_thread(env.enqueue, "newco", "work", {"n": 1})
        # Claims and maintenance go on; only a refresh would find the new database.
        await worker.signals.maintenance_passes.more(5, timeout=10)
        await worker.signals.claim_rounds.more(3, timeout=10)
        assert env.state("newco", made.id) is JobState.AVAILABLE


def _break_controls(env: Env, *, swap: bool = False) -> None:
    """acme (weight 3, max 2) loses its row; suspended globex's row says not paused,
    weight 7; a row for a tenant that does not exist appears. With *swap*, acme's
    row says paused and unlimited instead, and globex loses its row."""
    if swap:
        set_control(env, "acme", paused=True, weight=1, max_running=None)
        delete_control(env, "globex")
    else:
        delete_control(env, "acme")
        set_control(env, "globex", paused=False, weight=7)
    insert_control(env.source("acme"), "ghost", weight=9)


def _controls_match(env: Env) -> bool:
    return (
        compared(control_row(env, "acme")) == wanted_control(weight=3, max_running=2)
        and compared(control_row(env, "globex")) == wanted_control(paused=True)
        and "ghost" not in control_ids(env.source("acme"))
    )


@JOB_TABLE_CASES
def test_sync_controls_repairs_rows_that_drifted_from_the_catalog(
    make_env: EnvFactory, backend: str, mode: str
) -> None:
    env = make_env(backend, mode, timeline_registry(Timeline()))
    env.t.update_tenant("acme", settings={"queue": {"weight": 3, "max_running": 2}})
    env.t.suspend_tenant("globex")
    assert _controls_match(env)
    _break_controls(env)
    assert not _controls_match(env)
    assert env.queue.admin.sync_controls() == 3
    assert _controls_match(env)
    assert env.queue.admin.sync_controls() == 0  # nothing left to write


REPAIR_CASES = [
    ("sqlite", "shared", 0.3),
    ("sqlite", "database", 0.3),
    ("postgresql", "shared", 0.3),
    ("postgresql", "database", 0.3),
    # The contrast: without a full sync nothing repairs the rows.
    pytest.param("sqlite", "shared", 3600.0, id="sqlite-shared-never"),
]


@pytest.mark.parametrize(("backend", "mode", "full_sync_interval"), REPAIR_CASES)
async def test_the_worker_repairs_control_rows_in_its_full_sync(
    make_env: EnvFactory, backend: str, mode: str, full_sync_interval: float
) -> None:
    timeline = Timeline()
    env = make_env(backend, mode, timeline_registry(timeline))
    env.t.update_tenant("acme", settings={"queue": {"weight": 3, "max_running": 2}})
    env.t.suspend_tenant("globex")
    worker = env.worker(refresh_interval=0.1, full_sync_interval=full_sync_interval)
    async with running(worker):
        await worker.signals.refreshes.more(1, timeout=10)  # past the start-up sync
        # The active tenant's row wrongly says paused: its job waits until repaired.
        await asyncio.to_thread(_break_controls, env, swap=True)
        job = await asyncio.to_thread(env.enqueue, "acme", "work", {"n": 1})
        if full_sync_interval < 10:
            await wait_until(lambda: _controls_match(env), 10, what="the rows repaired")
            await wait_until(lambda: env.state("acme", job.id) is JobState.COMPLETED, 10)
        else:
            # Refreshes between full syncs write only catalog entries that changed.
            await worker.signals.refreshes.more(3, timeout=10)
            await worker.signals.claim_rounds.more(3, timeout=10)
            assert not _controls_match(env)
            assert env.state("acme", job.id) is JobState.AVAILABLE
