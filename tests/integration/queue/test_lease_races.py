"""Renewal racing the worker's own outcomes: no deadlock, and no false "lost lease".

A worker renews the leases of every job it holds while it completes (or fails)
some of them on other connections. The two must not deadlock on PostgreSQL's
row locks, and a job whose outcome this worker has just written is not lost.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event, select

from tenantry.queue import Job, JobContext, JobRegistry, JobState
from tenantry.queue.drivers import ClaimRequest
from tenantry.queue.job import utcnow
from tenantry.queue.schema import jobs_table as J
from tests.conftest import TenantryFactory
from tests.integration.queue.handlers import Item, noop_registry
from tests.integration.queue.support import Env, EnvFactory, build_env, running, wait_until

#: The heartbeat's warning for a job whose lease is gone.
LOST_WARNING = "lost its lease"


def _wait_for_lock_or_end(engine: Any, pid: int, thread: threading.Thread) -> None:
    """Until backend *pid* waits for a lock, or *thread* has finished."""
    deadline = time.monotonic() + 10
    with engine.connect() as conn:
        while thread.is_alive():
            waiting = conn.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE pid = %(pid)s AND wait_event_type = 'Lock'",
                {"pid": pid},
            ).scalar()
            conn.rollback()
            if waiting:
                return
            assert time.monotonic() < deadline, "the renewal neither waited nor finished"
            time.sleep(0.02)


@pytest.mark.postgres
def test_renewal_and_completion_in_opposite_orders_do_not_deadlock(
    make_tenantry: TenantryFactory,
) -> None:
    """The heartbeat renews in claim order; acknowledgements arrive in finishing order.

    Two claims give two tokens, so each side is two statements. The completion
    locks the second job first; the renewal then runs over both; then the
    completion takes the first job. Were the renewal to wait for the second
    job's lock while holding the first, PostgreSQL would find a deadlock.
    """
    env = build_env(make_tenantry, "postgresql", "shared", noop_registry(), ("acme",))
    env.enqueue_many("acme", "record", [{"n": 1}, {"n": 2}])
    source = env.source("acme")
    driver, engine = source.driver, source.engine()

    def claim_one() -> Job:
        with engine.begin() as conn:
            (job,) = driver.claim(
                conn,
                ClaimRequest(
                    worker_id="w", queues=["default"], limit=1, lease_seconds=30, tenants=["acme"]
                ),
            )
        return job

    first, second = claim_one(), claim_one()
    assert first.lease_token != second.lease_token
    renewal = [(first.id, first.lease_token or ""), (second.id, second.lease_token or "")]
    errors: list[BaseException] = []
    kept: set[int] = set()
    started = threading.Event()
    pid: list[int] = []

    def renew() -> None:
        try:
            with engine.connect() as conn:
                pid.append(int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()))
                conn.rollback()
                started.set()
                with conn.begin():
                    kept.update(driver.extend(conn, renewal, 60))
        except BaseException as exc:  # reported below, on the test's thread
            errors.append(exc)
        finally:
            started.set()

    with engine.connect() as completer:
        with completer.begin():
            # Step 1: the completion of the job that finished first locks its row.
            assert driver.complete(completer, [renewal[1]]) == {second.id}
            renewer = threading.Thread(target=renew)
            renewer.start()
            assert started.wait(10)
            assert pid, errors
            _wait_for_lock_or_end(engine, pid[0], renewer)
            if not renewer.is_alive():
                # The renewal did not wait: the first job's lease was extended.
                with engine.connect() as conn:
                    expires = conn.scalar(select(J.c.lease_expires_at).where(J.c.id == first.id))
                assert expires is not None
                assert expires > utcnow() + timedelta(seconds=45)
            # Step 2: the same completion reaches the job the renewal holds.
            try:
                done = driver.complete(completer, [renewal[0]])
            except BaseException as exc:
                errors.append(exc)
                raise
            finally:
                renewer.join(15)
        assert not renewer.is_alive()
    assert not [e for e in errors if "deadlock" in str(e).lower()], errors
    assert errors == []
    assert done == {first.id}
    # The job being completed was skipped, not waited for, and not taken for lost.
    assert kept == {first.id, second.id}
    assert env.state("acme", first.id) is JobState.COMPLETED
    assert env.state("acme", second.id) is JobState.COMPLETED


#: How long the worker is kept between writing an outcome and dropping the job.
WINDOW = 0.05


def _quick_registry(contexts: list[JobContext]) -> JobRegistry:
    registry = JobRegistry()

    @registry.handler("plain")
    async def plain(ctx: JobContext, payload: Item) -> None:
        contexts.append(ctx)

    @registry.handler("transactional", transactional=True)
    def transactional(ctx: JobContext, payload: Item) -> None:
        contexts.append(ctx)
        # Application work after the commit (the completion commits with it),
        # on the job's thread, before the worker learns that the job is done.
        event.listen(ctx.session, "after_commit", lambda _: time.sleep(WINDOW), once=True)

    @registry.handler("failing", max_attempts=1)
    async def failing(ctx: JobContext, payload: Item) -> None:
        contexts.append(ctx)
        raise ValueError("expected")

    return registry


def _slow_claim_checkin(env: Env) -> None:
    """Hold the claim thread a moment after each claim transaction commits.

    A claim carries pending acknowledgements in its transaction; the worker
    drops those jobs only once the claim returns. Renewals run meanwhile.
    """

    def checkin(dbapi_connection: Any, record: Any) -> None:
        if threading.current_thread().name.startswith("tenantry-claim"):
            time.sleep(WINDOW)

    event.listen(env.source("acme").claim_engine().pool, "checkin", checkin)


@pytest.mark.parametrize(
    ("kind", "outcome"),
    [
        ("plain", JobState.COMPLETED),
        ("transactional", JobState.COMPLETED),
        ("failing", JobState.DEAD),
    ],
)
async def test_jobs_this_worker_finished_are_never_reported_lost(
    make_env: EnvFactory,
    backend: str,
    kind: str,
    outcome: JobState,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Renewals run back to back while the worker writes outcomes.

    Between the commit of an outcome and the moment the job leaves the jobs
    held, a renewal finds the row no longer running under the lease. That is
    the worker's own doing, not a lost lease: no warning, no ``lease_lost``.
    For completions that moment is stretched (``WINDOW``) by work after the
    commit; a failure's is left as it comes.
    """
    contexts: list[JobContext] = []
    env = make_env(backend, "shared", _quick_registry(contexts))
    if kind == "plain":
        _slow_claim_checkin(env)
    n = 200 if kind == "failing" else 100
    enqueued = env.enqueue_many("acme", kind, [{"n": i} for i in range(n)])
    ids = {j.id for j in enqueued}
    worker = env.worker(concurrency=8, lease_seconds=5.0, heartbeat_interval=0.002)
    with caplog.at_level(logging.WARNING, logger="tenantry"):
        async with running(worker):
            await wait_until(
                lambda: env.counts("acme")[outcome.value] == n, 60, what="every job finished"
            )
    lost = [r.getMessage() for r in caplog.records if LOST_WARNING in r.getMessage()]
    assert lost == []
    assert len(contexts) == n
    assert {c.job.id for c in contexts} == ids
    assert [c.job.id for c in contexts if c.lease_lost] == []
    assert worker.stats.lost == 0
    if outcome is JobState.COMPLETED:
        assert worker.stats.completed == n
    else:
        assert worker.stats.dead == n
