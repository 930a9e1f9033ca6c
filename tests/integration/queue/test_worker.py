"""Workers: every job once, in its tenant; transactional handlers; scheduled jobs."""

from __future__ import annotations

import asyncio
import gc
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from tenantry import current_tenant, current_tenant_or_none, tenant_context
from tenantry.queue import JobContext, JobRegistry, JobState, Queue, RetryPolicy
from tests.integration.locks import TableLock
from tests.integration.queue.handlers import Item, Recorder, recording_registry
from tests.integration.queue.support import CASES, EnvFactory, running, wait_until
from tests.models import Note

THREE_TENANTS = ("acme", "globex", "initech")


@CASES
async def test_workers_run_each_job_exactly_once_in_its_tenant(
    make_env: EnvFactory, backend: str, mode: str
) -> None:
    rec = Recorder()
    registry = JobRegistry()

    @registry.handler("async_job")
    async def async_job(ctx: JobContext, payload: Item) -> None:
        rec.hit(ctx)
        assert current_tenant() == ctx.tenant_id
        await asyncio.sleep(0.002)

    @registry.handler("sync_job")
    def sync_job(ctx: JobContext, payload: Item) -> None:
        rec.hit(ctx)
        time.sleep(0.002)

    env = make_env(backend, mode, registry, THREE_TENANTS)
    expected: set[tuple[str, int]] = set()
    for tid in THREE_TENANTS:
        for kind, n in (("async_job", 20), ("sync_job", 10)):
            jobs = env.enqueue_many(tid, kind, [{"n": i} for i in range(n)])
            expected |= {(tid, j.id) for j in jobs}
    assert len(expected) == 90

    def all_completed() -> bool:
        return all(env.counts(tid)["completed"] == 30 for tid in THREE_TENANTS)

    workers = [env.worker(concurrency=4) for _ in range(3)]
    async with running(*workers):
        await wait_until(all_completed, what="90 jobs completed")

    assert set(rec.calls) == expected
    assert all(n == 1 for n in rec.calls.values()), rec.calls.most_common(3)
    # The handler ran with the job's tenant set, sync (thread) handlers included.
    assert all(seen == [key[0]] for key, seen in rec.tenants.items())
    stats = [w.stats for w in workers]
    assert sum(s.completed for s in stats) == 90
    assert sum(s.claimed for s in stats) == 90
    assert sum(s.lost + s.retried + s.dead for s in stats) == 0
    for tid in THREE_TENANTS:
        counts = env.counts(tid)
        assert counts["completed"] == 30
        assert sum(counts.values()) == 30
        for job in env.queue.admin.list_jobs(tenant_id=tid, limit=100):
            assert job.attempt == 1
            assert job.finished_at is not None
            assert job.lease_token is None
    # Nothing leaked into the test's own context.
    assert current_tenant_or_none() is None


def _transactional_registry(rec: Recorder, box: list[Queue]) -> JobRegistry:
    """Handlers that write a Note and enqueue a follow-up, all through ``ctx.session``."""
    registry = JobRegistry()
    never_soon = RetryPolicy(max_attempts=3, base=600, jitter=0)

    @registry.handler("follow_up")
    async def follow_up(ctx: JobContext, payload: Item) -> None:
        rec.hit(ctx)

    def write_sync(ctx: JobContext, payload: Item) -> None:
        rec.hit(ctx)
        session: Session = ctx.session
        session.add(Note(body=payload.key))
        session.flush()
        box[0].enqueue("follow_up", {"key": payload.key}, session=session)

    async def write_async(ctx: JobContext, payload: Item) -> None:
        rec.hit(ctx)
        session: AsyncSession = ctx.session
        session.add(Note(body=payload.key))
        await session.flush()
        await box[0].aenqueue("follow_up", {"key": payload.key}, session=session)

    @registry.handler("tx_sync", transactional=True)
    def tx_sync(ctx: JobContext, payload: Item) -> None:
        write_sync(ctx, payload)

    @registry.handler("tx_async", transactional=True)
    async def tx_async(ctx: JobContext, payload: Item) -> None:
        await write_async(ctx, payload)

    @registry.handler("tx_sync_fail", transactional=True, retry=never_soon)
    def tx_sync_fail(ctx: JobContext, payload: Item) -> None:
        write_sync(ctx, payload)
        raise RuntimeError("handler failed after writing")

    @registry.handler("tx_async_fail", transactional=True, retry=never_soon)
    async def tx_async_fail(ctx: JobContext, payload: Item) -> None:
        await write_async(ctx, payload)
        raise RuntimeError("handler failed after writing")

    return registry


@CASES
@pytest.mark.parametrize("flavor", ["sync", "async"])
async def test_transactional_handlers_write_exactly_once(
    make_env: EnvFactory, backend: str, mode: str, flavor: str
) -> None:
    rec = Recorder()
    box: list[Queue] = []
    env = make_env(backend, mode, _transactional_registry(rec, box))
    box.append(env.queue)
    keys: dict[str, list[str]] = {}
    for tid in env.tenants:
        keys[tid] = [f"{tid}-{i}" for i in range(8)]
        env.enqueue_many(tid, f"tx_{flavor}", [{"key": k} for k in keys[tid]])
    failing = env.enqueue("acme", f"tx_{flavor}_fail", {"key": "doomed"})

    def settled() -> bool:
        return (
            all(env.counts(tid)["completed"] == 16 for tid in env.tenants)
            and env.state("acme", failing.id) is JobState.RETRYABLE
        )

    worker = env.worker()
    async with running(worker):
        await wait_until(settled, what="transactional jobs and their follow-ups settled")

    for tid in env.tenants:
        assert env.notes(tid) == sorted(keys[tid])
        done = env.queue.admin.list_jobs(tenant_id=tid, kind=f"tx_{flavor}")
        assert len(done) == 8
        assert all(j.state is JobState.COMPLETED and j.attempt == 1 for j in done)
        # Exactly one follow-up per successful job, enqueued in its transaction.
        follow_ups = env.queue.admin.list_jobs(tenant_id=tid, kind="follow_up")
        assert sorted(j.payload["key"] for j in follow_ups) == sorted(keys[tid])
        assert all(j.state is JobState.COMPLETED for j in follow_ups)
    assert all(n == 1 for n in rec.calls.values())
    assert worker.stats.completed == 32
    bad = env.job("acme", failing.id)
    assert bad.state is JobState.RETRYABLE
    assert bad.attempt == 1
    assert [e["type"] for e in bad.errors] == ["RuntimeError"]
    assert bad.finished_at is None
    assert "doomed" not in env.notes("acme")
    assert env.total("acme") == 8 + 8 + 1  # the failed run's follow-up was rolled back


async def test_delayed_job_waits_and_past_run_at_runs_now(
    make_env: EnvFactory, backend: str
) -> None:
    rec = Recorder()
    env = make_env(backend, "shared", recording_registry(rec))
    worker = env.worker()
    async with running(worker):
        async with tenant_context("acme"):
            t0 = time.time()
            delayed = await env.queue.aenqueue("work", {"n": 1}, delay=0.6)
            past = await env.queue.aenqueue(
                "work", {"n": 2}, run_at=datetime.now(UTC) - timedelta(hours=1)
            )
        assert delayed.state is JobState.SCHEDULED
        assert past.state is JobState.AVAILABLE
        await wait_until(lambda: rec.count("acme", past.id) == 1, 5, what="past job ran")
        past_at = rec.first_time("acme", past.id)
        assert past_at is not None
        assert past_at - t0 < 0.45
        await asyncio.sleep(max(0.0, t0 + 0.45 - time.time()))
        assert rec.count("acme", delayed.id) == 0, "the delayed job ran early"
        await wait_until(lambda: rec.count("acme", delayed.id) == 1, 10, what="delayed job ran")
        await wait_until(lambda: env.state("acme", delayed.id) is JobState.COMPLETED, 5)
    ran_at = rec.first_time("acme", delayed.id)
    assert ran_at is not None
    assert ran_at - t0 >= 0.58
    job = env.job("acme", delayed.id)
    assert job.attempted_at is not None
    assert job.attempted_at >= job.scheduled_at - timedelta(milliseconds=5)


async def test_run_at_in_another_timezone_means_the_same_instant(
    make_env: EnvFactory, backend: str
) -> None:
    # SQLite must store run_at as an instant, not its wall-clock time without the offset.
    rec = Recorder()
    env = make_env(backend, "shared", recording_registry(rec))
    plus5 = timezone(timedelta(hours=5))
    run_at = (datetime.now(UTC) + timedelta(seconds=0.4)).astimezone(plus5)
    job = env.enqueue("acme", "work", {"n": 1}, run_at=run_at)
    assert job.state is JobState.SCHEDULED
    stored = env.job("acme", job.id).scheduled_at
    assert abs((stored - run_at).total_seconds()) < 0.001, f"{stored} != {run_at}"
    async with running(env.worker()):
        await wait_until(lambda: rec.count("acme", job.id) == 1, 5, what="job ran")


async def test_higher_priority_runs_first(make_env: EnvFactory, backend: str) -> None:
    rec = Recorder()
    env = make_env(backend, "shared", recording_registry(rec))
    ids = {}
    for name, priority in (("p0", 0), ("p5a", 5), ("p1", 1), ("p5b", 5), ("neg", -1)):
        ids[env.enqueue("acme", "work", {"key": name}, priority=priority).id] = name
    worker = env.worker(concurrency=1, prefetch=0)
    async with running(worker):
        await wait_until(lambda: rec.total() == 5, 10)
    order = [ids[s.id] for s in rec.snapshots]
    assert order == ["p5a", "p5b", "p1", "p0", "neg"]


@CASES
async def test_worker_serves_only_its_queues_and_tenants(
    make_env: EnvFactory, backend: str, mode: str
) -> None:
    rec = Recorder()
    registry = JobRegistry()

    @registry.handler("plain")
    async def plain(ctx: JobContext, payload: Item) -> None:
        rec.hit(ctx)

    @registry.handler("email", queue="emails")
    async def email(ctx: JobContext, payload: Item) -> None:
        rec.hit(ctx)

    env = make_env(backend, mode, registry)
    wanted = env.enqueue("acme", "email", {"n": 1})
    redirected = env.enqueue("acme", "plain", {"n": 2}, queue="emails")
    other_queue = env.enqueue("acme", "plain", {"n": 3})
    other_tenant = env.enqueue("globex", "email", {"n": 4})
    assert env.job("acme", redirected.id).queue == "emails"
    worker = env.worker(queues=["emails"], tenants=["acme"])
    async with running(worker):
        await wait_until(
            lambda: env.counts("acme")["completed"] == 2, 10, what="acme's emails done"
        )
        await worker.signals.claim_rounds.more(3, timeout=10)  # chances to (wrongly) take others
    assert set(rec.calls) == {("acme", wanted.id), ("acme", redirected.id)}
    assert env.state("acme", other_queue.id) is JobState.AVAILABLE
    assert env.state("globex", other_tenant.id) is JobState.AVAILABLE


async def test_cancelled_mid_claim_hands_the_claim_connection_back(
    make_env: EnvFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run cancelled while its claim thread is in a claim waits for that claim.

    Otherwise the connection would go back to a pool the caller disposes next,
    never to be closed. The slow claim is a stand-in for a slow database.
    """
    import threading

    from tenantry.queue.drivers.postgres import PostgresDriver

    registry = JobRegistry()

    @registry.handler("noop")
    async def noop(ctx: JobContext, payload: Item) -> None:
        return None

    env = make_env("postgresql", "shared", registry, ("acme",))
    env.enqueue_many("acme", "noop", [{"n": i} for i in range(5)])
    entered = threading.Event()
    original = PostgresDriver.claim

    def slow_claim(self: PostgresDriver, *args: object, **kwargs: object) -> object:
        entered.set()
        time.sleep(0.5)
        return original(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(PostgresDriver, "claim", slow_claim)
    worker = env.worker(concurrency=2)
    task = asyncio.create_task(worker.run())
    assert await asyncio.to_thread(entered.wait, 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert worker.calls_in_flight == 0  # the claim finished before run() returned
    pool = env.source("acme").claim_engine().pool
    assert pool.checkedout() == 0  # type: ignore[attr-defined]


@pytest.mark.postgres
async def test_cancelled_mid_refresh_hands_the_catalog_connection_back(
    make_env: EnvFactory,
) -> None:
    """A run cancelled while a catalog read waits on the database waits for that read.

    The periodic source refresh reads the catalog on a thread, and cancelling
    the run does not stop that thread. A lock held on the catalog table keeps
    the read waiting, as a slow database would; run() must not return (and let
    the caller dispose the pools) while the read still holds its connection.
    """
    registry = JobRegistry()

    @registry.handler("noop")
    async def noop(ctx: JobContext, payload: Item) -> None:
        return None

    env = make_env("postgresql", "shared", registry, ("acme",))
    worker = env.worker(refresh_interval=0.1)
    task = asyncio.create_task(worker.run())
    await worker.wait_started()
    with TableLock(env.t.config.stores["default"].url, "tenantry", "tenantry_tenants") as lock:
        assert await lock.cancel_while_held(task, 0.3) >= 0.25  # it waited for the read
    assert env.t.catalog.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert worker.calls_in_flight == 0


async def test_freed_slots_start_buffered_jobs_while_a_claim_is_under_way(
    make_env: EnvFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Buffered jobs start as slots free up, not when the claim loop next looks.

    With 2 slots and 20 jobs held, the held jobs must all run while the next
    (slow) claim is under way, not only the 2 started before it: otherwise a
    worker whose claims are slow (many tenants) runs one slot-full per claim.
    The slow claim is a stand-in for a slow database.
    """
    import threading

    from tenantry.queue.drivers.postgres import PostgresDriver

    registry = JobRegistry()
    started: list[float] = []

    @registry.handler("noop")
    async def noop(ctx: JobContext, payload: Item) -> None:
        started.append(time.monotonic())

    env = make_env("postgresql", "shared", registry, ("acme",))
    env.enqueue_many("acme", "noop", [{"n": i} for i in range(60)])
    original = PostgresDriver.claim
    claims: list[tuple[float, float]] = []  # (entered, returned) of each claim
    lock = threading.Lock()

    def slow_claim(self: PostgresDriver, *args: object, **kwargs: object) -> object:
        entered = time.monotonic()
        jobs = original(self, *args, **kwargs)  # type: ignore[arg-type]
        if len(claims) >= 1:
            time.sleep(0.6)  # every claim after the first is slow
        with lock:
            claims.append((entered, time.monotonic()))
        return jobs

    monkeypatch.setattr(PostgresDriver, "claim", slow_claim)
    worker = env.worker(concurrency=2, prefetch=20, fair=False, listen=False)
    async with running(worker):
        await wait_until(lambda: len(claims) >= 3, what="three claims")
    first_back, (second_in, second_back) = claims[0][1], claims[1]
    assert second_in >= first_back
    # Everything the first claim brought (2 running + 20 buffered) started
    # before the slow second claim returned.
    during = [t for t in started if first_back <= t < second_back]
    assert len(during) >= 22, (len(during), len(started))


async def test_freeze_gc_freezes_the_heap_only_when_asked(
    make_env: EnvFactory, backend: str
) -> None:
    """``freeze_gc`` is process-wide: the default leaves the collector alone."""
    rec = Recorder()
    env = make_env(backend, "shared", recording_registry(rec))
    gc.unfreeze()
    try:
        async with running(env.worker()):
            env.enqueue("acme", "work", {"key": "plain"})
            await wait_until(lambda: rec.total() == 1, 10)
        assert gc.get_freeze_count() == 0
        async with running(env.worker(freeze_gc=True)):
            env.enqueue("acme", "work", {"key": "frozen"})
            await wait_until(lambda: rec.total() == 2, 10)
            # Frozen when it started: modules and all, far more than a job's objects.
            assert gc.get_freeze_count() > 10_000
    finally:
        gc.unfreeze()  # the test process carries on as it was
