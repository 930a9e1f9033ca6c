"""The queue follows the tenant life cycle: suspended tenants' jobs wait, deleted ones go."""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

import pytest
from sqlalchemy import func, select, text

from tenantry.queue import JobState
from tenantry.queue.job import utcnow
from tenantry.queue.schema import jobs_table as J
from tenantry.queue.worker import catalog_sync
from tenantry.tenancy.catalog import TenantStatus
from tests.conftest import TenantryFactory
from tests.integration.queue.handlers import Recorder, recording_registry
from tests.integration.queue.support import CASES, EnvFactory, build_env, running, wait_until


@CASES
async def test_a_suspended_tenants_jobs_wait_without_spending_attempts(
    make_env: EnvFactory, backend: str, mode: str
) -> None:
    rec = Recorder()
    env = make_env(backend, mode, recording_registry(rec))
    held = env.enqueue("acme", "work", {"n": 1})
    free = env.enqueue("globex", "work", {"n": 2})
    env.t.suspend_tenant("acme")
    worker = env.worker()
    async with running(worker):
        await wait_until(lambda: env.state("globex", free.id) is JobState.COMPLETED, 10)
        await worker.signals.claim_rounds.more(3, timeout=10)  # several claim rounds
        waiting = await env.ajob("acme", held.id)
        # Not even claimed: the claim itself skips paused tenants.
        assert waiting.state is JobState.AVAILABLE
        assert waiting.attempt == 0
        assert waiting.errors == []
        assert rec.count("acme", held.id) == 0
        await asyncio.to_thread(env.t.resume_tenant, "acme")
        await wait_until(lambda: env.state("acme", held.id) is JobState.COMPLETED, 10)
    done = env.job("acme", held.id)
    assert done.attempt == 1
    assert done.errors == []
    assert rec.count("acme", held.id) == 1


@CASES
async def test_a_job_claimed_before_its_tenant_was_suspended_waits_too(
    make_env: EnvFactory, backend: str, mode: str
) -> None:
    """The worker re-checks the catalog before it starts a job.

    Here the catalog says "suspended" but the control row next to the jobs
    was not updated (as when the jobs' database was away during the
    suspension): the job is claimed, then put back without spending its
    attempt, until the tenant is active again.
    """
    rec = Recorder()
    env = make_env(backend, mode, recording_registry(rec))
    worker = env.worker(suspended_retry=0.3, refresh_interval=3600)
    async with running(worker):
        held = await asyncio.to_thread(env.enqueue, "acme", "work", {"n": 1}, delay=0.5)
        # Behind the queue's back, after the worker's start-up reconcile:
        await asyncio.to_thread(env.t.catalog.set_status, "acme", TenantStatus.SUSPENDED)
        await wait_until(lambda: worker.stats.postponed >= 1, 10, what="the job put back")
        waiting = await env.ajob("acme", held.id)
        assert waiting.attempt == 0
        assert waiting.scheduled_at > utcnow()  # waits suspended_retry, then re-checks
        postponed = worker.stats.postponed
        await wait_until(
            lambda: worker.stats.postponed >= postponed + 2, 10, what="several postpone cycles"
        )
        assert rec.count("acme", held.id) == 0
        await asyncio.to_thread(env.t.catalog.set_status, "acme", TenantStatus.ACTIVE)
        await wait_until(lambda: env.state("acme", held.id) is JobState.COMPLETED, 10)
    done = env.job("acme", held.id)
    assert done.attempt == 1
    assert done.errors == []


@CASES
def test_deleting_a_tenant_deletes_its_jobs(
    make_tenantry: TenantryFactory, backend: str, mode: str
) -> None:
    env = build_env(make_tenantry, backend, mode, recording_registry(Recorder()))
    env.enqueue_many("acme", "work", [{"n": i} for i in range(3)])
    env.enqueue_many("globex", "work", [{"n": i} for i in range(2)])
    store = env.t.default_store
    env.t.delete_tenant("globex")

    assert env.total("acme") == 3
    assert {j.tenant_id for j in env.queue.admin.list_jobs()} == {"acme"}
    for source in env.queue.admin.sources():
        with source.engine(write=False).connect() as conn:
            left = conn.scalar(select(func.count()).select_from(J).where(J.c.tenant_id == "globex"))
        assert left == 0, source.key
    if mode == "database":
        name = store.tenant_database_name("globex")
        if backend == "sqlite":
            assert not os.path.exists(name)
        else:
            with store.admin_engine().connect() as conn:
                found = conn.execute(
                    text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}
                ).first()
            assert found is None
    # The id can be used again, and starts with no jobs.
    env.t.create_tenant("globex", isolation=mode)
    assert env.total("globex") == 0
    env.enqueue("globex", "work", {"n": 9})
    assert env.total("globex") == 1


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_a_worker_with_many_tenants_keeps_their_statuses_cached(
    make_env: EnvFactory,
    make_tenantry: TenantryFactory,
    backend: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Jobs start without a catalog lookup, and a suspension still stops them.

    (Two tenants stand for the thousands ``STATUS_LISTING_MIN_TENANTS`` is for.)
    """
    monkeypatch.setattr(catalog_sync, "STATUS_LISTING_MIN_TENANTS", 2)
    rec = Recorder()
    env = make_env(backend, "shared", recording_registry(rec))
    catalog = env.t.catalog
    catalog.ttl = 0.5  # the listing is renewed every 0.3 s
    lookups: list[str] = []
    for name in ("get", "warm"):
        original = getattr(catalog, name)

        def spy(*args: Any, _original: Any = original, _name: str = name, **kw: Any) -> Any:
            if threading.current_thread().name.startswith("tenantry-io"):  # the worker's
                lookups.append(_name)
            return _original(*args, **kw)

        monkeypatch.setattr(catalog, name, spy)
    worker = env.worker(suspended_retry=0.3)
    async with running(worker):
        await wait_until(lambda: catalog.status_cached("globex") is not None, 10, what="a listing")
        made = [
            await asyncio.to_thread(env.enqueue, t, "work", {"n": 1}, delay=0.5)
            for t in env.tenants
        ]
        catalog._cache.clear()  # the enqueues looked them up: only the listing may answer now
        lookups.clear()
        await wait_until(
            lambda: all(env.state(j.tenant_id, j.id) is JobState.COMPLETED for j in made), 10
        )
        assert lookups == []
        # Suspended by another process (not invalidated here; its control row left
        # as it was): once the listing is renewed, the job is put back, not run.
        held = await asyncio.to_thread(env.enqueue, "globex", "work", {"n": 2}, delay=1.5)
        other = make_tenantry(backend, env.t.config)
        await asyncio.to_thread(other.catalog.set_status, "globex", TenantStatus.SUSPENDED)
        await wait_until(lambda: worker.stats.postponed >= 1, 10, what="the job put back")
        assert rec.count("globex", held.id) == 0
        assert env.state("globex", held.id) is JobState.SCHEDULED
