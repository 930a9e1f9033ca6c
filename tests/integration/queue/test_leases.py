"""Leases: every outcome is fenced on the lease token, so a stale worker changes nothing."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from tenantry.queue import Job, JobContext, JobRegistry, JobState
from tenantry.queue.drivers import ClaimRequest
from tenantry.queue.job import utcnow
from tests.conftest import TenantryFactory
from tests.integration.queue.handlers import Item, Recorder, noop_registry, recording_registry
from tests.integration.queue.support import (
    CASES,
    Env,
    EnvFactory,
    build_env,
    running,
    wait_until,
)
from tests.models import Note


@CASES
def test_outcomes_of_a_stolen_lease_are_void(
    make_tenantry: TenantryFactory, backend: str, mode: str
) -> None:
    env = build_env(make_tenantry, backend, mode, noop_registry())
    queued = env.enqueue("globex", "record", {"n": 1})
    source = env.source("globex")
    driver = source.driver

    claimed: list[Job] = []

    def claim(worker_id: str) -> list[int]:
        with source.engine().begin() as conn:
            jobs = driver.claim(
                conn,
                ClaimRequest(worker_id=worker_id, queues=["default"], limit=1, lease_seconds=30),
            )
        claimed.extend(jobs)
        return [j.id for j in jobs]

    assert claim("a") == [queued.id]
    old = claimed[0]
    assert (old.state, old.attempt, old.worker_id) == (JobState.RUNNING, 1, "a")
    assert old.lease_token
    assert claim("x") == []  # a running job is not claimable

    # Worker a stalls; its lease runs out and the rescuer hands the job back.
    env.set_columns("globex", queued.id, lease_expires_at=utcnow() - timedelta(seconds=5))
    with source.engine().begin() as conn:
        assert driver.rescue_expired(conn) == [(queued.id, JobState.AVAILABLE)]
    rescued = env.job("globex", queued.id)
    assert rescued.state is JobState.AVAILABLE
    assert rescued.lease_token is None
    assert [e["type"] for e in rescued.errors] == ["LeaseExpired"]

    assert claim("b") == [queued.id]
    new = claimed[1]
    assert new.attempt == 2
    assert new.lease_token != old.lease_token
    old_lease = [(old.id, old.lease_token or "")]
    error = {"at": "x", "attempt": 1, "type": "Late", "message": "late", "traceback": ""}
    with source.engine().begin() as conn:
        assert driver.complete(conn, old_lease) == set()
        assert driver.fail(conn, old, error, retry_at=None, dead=True) is False
        assert driver.fail(conn, old, error, retry_at=utcnow()) is False
        assert driver.extend(conn, old_lease, 60) == set()
        assert driver.release(conn, old_lease) == set()
    current = env.job("globex", queued.id)
    assert (current.state, current.worker_id, current.lease_token) == (
        JobState.RUNNING,
        "b",
        new.lease_token,
    )
    assert current.attempt == 2

    with source.engine().begin() as conn:
        assert driver.complete(conn, [(new.id, new.lease_token or "")]) == {queued.id}
    done = env.job("globex", queued.id)
    assert done.state is JobState.COMPLETED
    assert [e["type"] for e in done.errors] == ["LeaseExpired"]
    with source.engine().begin() as conn:
        # Completed is final: not even the rightful lease can complete it twice.
        assert driver.complete(conn, [(new.id, new.lease_token or "")]) == set()
    assert env.total("acme") == 0


def _self_cancelling_registry(rec: Recorder, env_box: list[Env]) -> JobRegistry:
    """Handlers that write a Note and lose their lease (cancelled) before they return."""
    registry = JobRegistry()

    @registry.handler("tx_sync", transactional=True)
    def tx_sync(ctx: JobContext, payload: Item) -> None:
        rec.hit(ctx)
        env_box[0].queue.admin.cancel_job(ctx.tenant_id, ctx.job.id)  # another connection
        session: Session = ctx.session
        session.add(Note(body=payload.key))
        session.flush()
        rec.done(ctx)

    @registry.handler("tx_async", transactional=True)
    async def tx_async(ctx: JobContext, payload: Item) -> None:
        rec.hit(ctx)
        await asyncio.to_thread(env_box[0].queue.admin.cancel_job, ctx.tenant_id, ctx.job.id)
        session: AsyncSession = ctx.session
        session.add(Note(body=payload.key))
        await session.flush()
        rec.done(ctx)

    @registry.handler("plain")
    async def plain(ctx: JobContext, payload: Item) -> None:
        rec.hit(ctx)
        await asyncio.to_thread(env_box[0].queue.admin.cancel_job, ctx.tenant_id, ctx.job.id)
        rec.done(ctx)

    return registry


@CASES
@pytest.mark.parametrize("kind", ["tx_sync", "tx_async"])
async def test_transactional_writes_roll_back_when_the_lease_is_lost(
    make_env: EnvFactory, backend: str, mode: str, kind: str
) -> None:
    rec = Recorder()
    box: list[Env] = []
    env = make_env(backend, mode, _self_cancelling_registry(rec, box))
    box.append(env)
    job = env.enqueue("acme", kind, {"key": "must-not-exist"})
    keeper = env.enqueue("globex", kind, {"key": "unrelated"})
    env.queue.admin.cancel_job("globex", keeper.id)
    worker = env.worker()
    async with running(worker):
        await wait_until(lambda: worker.stats.lost == 1, 10, what="the lost lease noticed")
    assert rec.count("acme", job.id) == 1
    assert rec.finished[("acme", job.id)] == 1  # the handler itself succeeded
    assert env.notes("acme") == []  # ...but its write was rolled back with the completion
    cancelled = env.job("acme", job.id)
    assert cancelled.state is JobState.CANCELLED
    assert cancelled.errors == []
    assert worker.stats.completed == 0
    assert rec.count("globex", keeper.id) == 0


async def test_plain_handler_result_is_void_when_the_lease_is_lost(
    make_env: EnvFactory, backend: str
) -> None:
    rec = Recorder()
    box: list[Env] = []
    env = make_env(backend, "shared", _self_cancelling_registry(rec, box))
    box.append(env)
    job = env.enqueue("acme", "plain", {"n": 1})
    worker = env.worker()
    async with running(worker):
        await wait_until(lambda: worker.stats.lost == 1, 10, what="the lost lease noticed")
    assert rec.finished[("acme", job.id)] == 1
    assert env.state("acme", job.id) is JobState.CANCELLED
    assert worker.stats.completed == 0


@CASES
async def test_jobs_of_a_crashed_worker_are_rescued(
    make_env: EnvFactory, backend: str, mode: str
) -> None:
    rec = Recorder()
    env = make_env(backend, mode, recording_registry(rec))
    again = env.enqueue("acme", "work", {"n": 1})
    last_try = env.enqueue("globex", "work", {"n": 2}, max_attempts=1)
    for tid in ("acme", "globex"):
        source = env.source(tid)
        with source.engine().begin() as conn:
            claimed = source.driver.claim(
                conn,
                ClaimRequest(
                    worker_id="crashed",
                    queues=["default"],
                    limit=5,
                    lease_seconds=0.2,
                    tenants=[tid],
                ),
            )
        assert len(claimed) == 1
    worker = env.worker(rescue_interval=0.2)
    async with running(worker):
        await wait_until(
            lambda: (
                env.state("acme", again.id) is JobState.COMPLETED
                and env.state("globex", last_try.id) is JobState.DEAD
            ),
            10,
        )
    rescued = env.job("acme", again.id)
    assert rescued.attempt == 2
    assert [e["type"] for e in rescued.errors] == ["LeaseExpired"]
    assert "crashed" in str(rescued.errors[0]["message"])
    assert rescued.worker_id == worker.worker_id
    dead = env.job("globex", last_try.id)
    assert dead.attempt == 1
    assert [e["type"] for e in dead.errors] == ["LeaseExpired"]
    assert dead.finished_at is not None
    assert rec.count("acme", again.id) == 1
    assert rec.count("globex", last_try.id) == 0
    assert worker.stats.rescued == 2


async def test_heartbeat_keeps_a_long_job_from_being_rescued(
    make_env: EnvFactory, backend: str
) -> None:
    rec = Recorder()
    registry = JobRegistry()

    @registry.handler("long")
    async def long(ctx: JobContext, payload: Item) -> None:
        rec.hit(ctx)
        await asyncio.sleep(1.5)
        rec.done(ctx)

    env = make_env(backend, "shared", registry)
    job = env.enqueue("acme", "long", {"n": 1})
    # Leases of 0.6 s, renewed every 0.2 s; a second worker rescues every 0.2 s.
    workers = [env.worker(lease_seconds=0.6, rescue_interval=0.2) for _ in range(2)]
    async with running(*workers):
        await wait_until(lambda: env.state("acme", job.id) is JobState.COMPLETED, 10)
    done = env.job("acme", job.id)
    assert done.attempt == 1
    assert done.errors == []
    assert rec.count("acme", job.id) == 1
    assert rec.finished[("acme", job.id)] == 1
    assert sum(w.stats.rescued for w in workers) == 0
    assert sum(w.stats.completed for w in workers) == 1


async def test_cancel_reaches_a_running_handler_and_drops_a_prefetched_job(
    make_env: EnvFactory, backend: str
) -> None:
    rec = Recorder()
    registry = JobRegistry()

    @registry.handler("watch")
    async def watch(ctx: JobContext, payload: Item) -> None:
        rec.hit(ctx)
        deadline = time.monotonic() + 10
        while not ctx.lease_lost and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if ctx.lease_lost:
            rec.done(ctx)

    env = make_env(backend, "shared", registry)
    first, second = env.enqueue_many("acme", "watch", [{"n": 1}, {"n": 2}])
    # One slot and one prefetched job; heartbeats every 0.3 s.
    worker = env.worker(concurrency=1, prefetch=1, lease_seconds=0.9)
    async with running(worker):
        await wait_until(lambda: rec.count("acme", first.id) == 1, 10)
        await wait_until(lambda: env.counts("acme")["running"] == 2, 10, what="both claimed")
        for job in (first, second):
            await asyncio.to_thread(env.queue.admin.cancel_job, "acme", job.id)
        await wait_until(lambda: rec.finished[("acme", first.id)] == 1, 5, what="the handler told")
        await worker.signals.claim_rounds.more(3, timeout=10)  # chances to (wrongly) start it
    assert rec.count("acme", second.id) == 0  # dropped, never started
    assert env.state("acme", first.id) is JobState.CANCELLED
    assert env.state("acme", second.id) is JobState.CANCELLED
    assert worker.stats.completed == 0
    assert worker.stats.released == 0
