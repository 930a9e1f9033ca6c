"""Graceful shutdown: finish within the grace period, otherwise hand the jobs back unspent."""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy import select

from tenantry.queue import JobContext, JobRegistry, JobState
from tenantry.queue.schema import jobs_table as J
from tests.integration.queue.handlers import Item, Recorder
from tests.integration.queue.support import EnvFactory, running, wait_until


def _slow_registry(rec: Recorder, started: asyncio.Event) -> JobRegistry:
    """``slow`` (async) and ``slow_sync`` sleep for the payload's ``sleep`` seconds."""
    registry = JobRegistry()
    loop = asyncio.get_running_loop()

    @registry.handler("slow")
    async def slow(ctx: JobContext, payload: Item) -> None:
        rec.hit(ctx)
        started.set()
        await asyncio.sleep(payload.sleep)
        rec.done(ctx)

    @registry.handler("slow_sync")
    def slow_sync(ctx: JobContext, payload: Item) -> None:
        rec.hit(ctx)
        loop.call_soon_threadsafe(started.set)
        time.sleep(payload.sleep)
        rec.done(ctx)

    return registry


@pytest.mark.parametrize("kind", ["slow", "slow_sync"])
async def test_stop_lets_a_running_job_finish(
    make_env: EnvFactory, backend: str, kind: str
) -> None:
    rec = Recorder()
    started = asyncio.Event()
    env = make_env(backend, "shared", _slow_registry(rec, started))
    job = env.enqueue("acme", kind, {"sleep": 0.5})
    worker = env.worker(shutdown_grace=10)
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(started.wait(), 20)
    stopped_at = time.monotonic()
    worker.stop()
    stats = await asyncio.wait_for(task, 20)
    assert time.monotonic() - stopped_at < 5
    assert rec.finished[("acme", job.id)] == 1
    done = env.job("acme", job.id)
    assert done.state is JobState.COMPLETED  # acknowledged before run() returned
    assert done.attempt == 1
    assert (stats.completed, stats.released, stats.lost) == (1, 0, 0)


@pytest.mark.timing
@pytest.mark.parametrize("kind", ["slow", "slow_sync"])
async def test_jobs_past_the_grace_period_are_released_unspent(
    make_env: EnvFactory, backend: str, kind: str
) -> None:
    rec = Recorder()
    started = asyncio.Event()
    env = make_env(backend, "shared", _slow_registry(rec, started))
    # Long enough that no job ends on its own before the checks below, even on a
    # loaded machine: a sync handler's thread sleeps on after its job is released.
    jobs = env.enqueue_many("acme", kind, [{"n": i, "sleep": 10.0} for i in range(3)])
    # One slot, two prefetched: one job runs, two wait in the worker's buffer.
    worker = env.worker(concurrency=1, prefetch=2, shutdown_grace=0.2)
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(started.wait(), 20)
    await wait_until(lambda: env.counts("acme")["running"] == 3, 5, what="3 jobs claimed")
    worker.stop()
    stats = await asyncio.wait_for(task, 20)
    assert stats.released == 3
    assert stats.completed == 0
    for job in jobs:
        back = env.job("acme", job.id)
        assert back.state is JobState.AVAILABLE
        assert back.attempt == 0  # the interrupted attempt is not spent
        assert back.lease_token is None
        assert back.worker_id is None
        assert back.errors == []
    assert rec.total() == 1
    assert not rec.finished

    # Another worker picks them up and completes them.
    for j in jobs:
        env.set_columns("acme", j.id, payload={"n": 0, "sleep": 0.0})
    successor = env.worker(worker_id="successor")
    async with running(successor):
        await wait_until(lambda: env.counts("acme")["completed"] == 3, 10)
    for job in jobs:
        final = env.job("acme", job.id)
        assert final.attempt == 1
        assert final.worker_id == "successor"
    assert successor.stats.completed == 3


async def test_hard_stop_releases_running_jobs_at_once(make_env: EnvFactory, backend: str) -> None:
    rec = Recorder()
    started = asyncio.Event()
    env = make_env(backend, "shared", _slow_registry(rec, started))
    job = env.enqueue("acme", "slow", {"sleep": 30})
    worker = env.worker(shutdown_grace=30)
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(started.wait(), 20)
    stopped_at = time.monotonic()
    worker.stop(hard=True)
    stats = await asyncio.wait_for(task, 20)
    assert time.monotonic() - stopped_at < 3  # did not wait out the 30 s grace period
    back = env.job("acme", job.id)
    assert back.state is JobState.AVAILABLE
    assert back.attempt == 0
    assert back.lease_token is None
    assert stats.released == 1
    assert not rec.finished


async def test_soft_then_hard_stop_cuts_the_grace_period_short(
    make_env: EnvFactory, backend: str
) -> None:
    rec = Recorder()
    started = asyncio.Event()
    env = make_env(backend, "shared", _slow_registry(rec, started))
    job = env.enqueue("acme", "slow", {"sleep": 30})
    worker = env.worker(shutdown_grace=30)
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(started.wait(), 20)
    worker.stop()
    await asyncio.sleep(0.3)
    assert not task.done()  # draining: waiting for the job
    stopped_at = time.monotonic()
    worker.stop(hard=True)
    stats = await asyncio.wait_for(task, 20)
    assert time.monotonic() - stopped_at < 3
    assert env.state("acme", job.id) is JobState.AVAILABLE
    assert env.job("acme", job.id).attempt == 0
    assert stats.released == 1


@pytest.mark.parametrize(
    "backend",
    # A row lock holds the acknowledgement in flight deterministically only on
    # PostgreSQL (SQLite's single write lock would also hold the drain's writes).
    ["postgresql"],
)
async def test_stop_does_not_drop_an_acknowledgement_in_flight(
    make_env: EnvFactory, backend: str
) -> None:
    rec = Recorder()
    first_gate = asyncio.Event()
    never = asyncio.Event()
    registry = JobRegistry()

    @registry.handler("gated")
    async def gated(ctx: JobContext, payload: Item) -> None:
        rec.hit(ctx)
        await (first_gate if payload.n == 0 else never).wait()
        rec.done(ctx)

    env = make_env(backend, "shared", registry)
    jobs = env.enqueue_many("acme", "gated", [{"n": i} for i in range(12)])
    first = jobs[0].id
    # 4 run and 4 wait in the buffer; when the first finishes one buffered job
    # starts, and its acknowledgement is written either by the completer or
    # by a small claim (claims come at least every CLAIM_INTERVAL while a
    # place is free): either way that write waits on the row lock below.
    worker = env.worker(concurrency=4, prefetch=4, shutdown_grace=0.2, lease_seconds=30)
    task = asyncio.create_task(worker.run())
    await wait_until(lambda: rec.count("acme", first) == 1, 20, what="first job started")
    await wait_until(lambda: env.counts("acme")["running"] == 8, 20, what="8 jobs claimed")

    source = env.source("acme")
    blocker = source.engine().connect()
    blocker.begin()
    blocker.execute(select(J.c.id).where(J.c.id == first).with_for_update())
    try:
        first_gate.set()
        await wait_until(lambda: rec.finished[("acme", first)] == 1, 5)
        await asyncio.sleep(0.2)  # the completer is now waiting on the row lock
        worker.stop()

        async def unblock_later() -> None:
            await asyncio.sleep(0.5)
            await asyncio.to_thread(blocker.rollback)

        unblock = asyncio.create_task(unblock_later())
        stats = await asyncio.wait_for(task, 20)
        await unblock
    finally:
        blocker.close()
    # Everything claimed is handed back (buffered, or cut off by the grace
    # period), except the first, which finished.
    assert stats.claimed in (8, 9)
    assert stats.released == stats.claimed - 1
    # The handler finished before shutdown, so its job must be acknowledged.
    assert env.state("acme", first) is JobState.COMPLETED
