"""What every ``QueueDriver`` must do, run unchanged against each of them.

Each test talks to the driver alone (no worker, no ``Queue``), on the job
source of one shared-mode tenant, so a new driver is checked by adding its
dialect to the ``backend`` fixture.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from tenantry.queue import Job, JobState
from tenantry.queue.drivers import ClaimRequest, QueueDriver, driver_for
from tenantry.queue.job import as_utc, utcnow
from tenantry.queue.schema import jobs_table as J
from tenantry.queue.sources import JobSource
from tests.conftest import TenantryFactory
from tests.integration.queue.handlers import noop_registry
from tests.integration.queue.support import Env, EnvFactory, build_env

ERROR = {"at": "x", "attempt": 1, "type": "Boom", "message": "boom", "traceback": ""}


def _row(tenant_id: str, n: int, **values: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "tenant_id": tenant_id,
        "queue": "default",
        "kind": "record",
        "payload": {"n": n},
        "priority": 0,
        "state": JobState.AVAILABLE.value,
        "attempt": 0,
        "max_attempts": 3,
        "scheduled_at": utcnow() - timedelta(seconds=1),
        "errors": [],
        "idempotency_key": None,
        "correlation_id": None,
        "created_at": utcnow(),
    }
    row.update(values)
    return row


def _request(limit: int = 10, **values: Any) -> ClaimRequest:
    return ClaimRequest(
        worker_id="conformance", queues=["default"], limit=limit, lease_seconds=30, **values
    )


@pytest.fixture
def env(make_tenantry: TenantryFactory, backend: str) -> Env:
    return build_env(make_tenantry, backend, "shared", noop_registry(), ("acme", "globex"))


@pytest.fixture
def source(env: Env) -> JobSource:
    return env.source("acme")


@pytest.fixture
def driver(source: JobSource) -> QueueDriver:
    driver = source.driver
    assert driver is driver_for(source.store.dialect)
    return driver


def _write(source: JobSource, rows: list[dict[str, Any]]) -> list[int]:
    with source.engine().begin() as conn:
        return [i.id for i in source.driver.write_jobs(conn, rows)]


def _claim(source: JobSource, request: ClaimRequest) -> list[Job]:
    with source.engine().begin() as conn:
        return source.driver.claim(conn, request)


def _state(source: JobSource, job_id: int) -> Any:
    with source.engine(write=False).connect() as conn:
        return conn.execute(select(J).where(J.c.id == job_id)).one()


def test_written_jobs_come_back_in_row_order(source: JobSource) -> None:
    ids = _write(source, [_row("acme", n) for n in range(5)])
    assert ids == sorted(ids)
    assert [_state(source, i).payload for i in ids] == [{"n": n} for n in range(5)]


def test_a_key_held_by_an_unfinished_job_returns_that_job(
    source: JobSource, driver: QueueDriver
) -> None:
    with source.engine().begin() as conn:
        first = driver.write_jobs(conn, [_row("acme", 1, idempotency_key="k")])
        again = driver.write_jobs(conn, [_row("acme", 2, idempotency_key="k"), _row("acme", 3)])
    assert [i.created for i in first] == [True]
    assert [i.created for i in again] == [False, True]
    assert again[0].id == first[0].id
    assert again[0].existing is not None
    assert again[0].existing["state"] == JobState.AVAILABLE.value


@pytest.mark.parametrize("fair", [True, False], ids=["fair", "fifo"])
def test_a_claim_takes_priority_first_then_oldest_under_one_lease(
    source: JobSource, fair: bool
) -> None:
    low = _write(source, [_row("acme", n) for n in range(3)])
    high = _write(source, [_row("acme", 9, priority=5)])
    jobs = _claim(source, _request(limit=3, fair=fair))
    assert sorted(jobs, key=lambda j: (-j.priority, j.id)) == jobs or fair
    assert [j.id for j in sorted(jobs, key=lambda j: (-j.priority, j.id))] == [*high, *low[:2]]
    assert {j.lease_token for j in jobs} != {None}
    assert len({j.lease_token for j in jobs}) == 1
    for job in jobs:
        assert (job.state, job.attempt, job.worker_id) == (JobState.RUNNING, 1, "conformance")
        assert job.lease_expires_at is not None
        assert job.payload == ({"n": 9} if job.id in high else {"n": low.index(job.id)})
    assert _claim(source, _request(limit=10, fair=fair, tenants=["globex"])) == []


def test_a_fair_claim_shares_the_batch_between_tenants(env: Env, source: JobSource) -> None:
    _write(source, [_row("acme", n) for n in range(6)])
    _write(env.source("globex"), [_row("globex", n) for n in range(6)])
    jobs = _claim(source, _request(limit=4, fair=True))
    assert sorted(j.tenant_id for j in jobs) == ["acme", "acme", "globex", "globex"]


def test_lease_updates_hold_only_for_the_current_lease(
    source: JobSource, driver: QueueDriver
) -> None:
    _write(source, [_row("acme", n) for n in range(3)])
    a, b, c = _claim(source, _request(limit=3))
    stale = [(a.id, "not-the-token")]
    with source.engine().begin() as conn:
        assert driver.complete(conn, stale) == set()
        assert driver.extend(conn, stale, 60) == set()
        assert driver.release(conn, stale) == set()
        assert driver.complete(conn, []) == set()
        assert driver.complete(conn, [(a.id, a.lease_token or "")]) == {a.id}
        assert driver.extend(conn, [(b.id, b.lease_token or "")], 600) == {b.id}
        assert driver.release(conn, [(c.id, c.lease_token or "")]) == {c.id}
        assert driver.complete(conn, [(a.id, a.lease_token or "")]) == set()  # final
    assert _state(source, a.id).state == JobState.COMPLETED.value
    extended = as_utc(_state(source, b.id).lease_expires_at)
    assert extended is not None
    assert extended > utcnow() + timedelta(seconds=300)
    released = _state(source, c.id)
    assert (released.state, released.attempt, released.lease_token) == ("available", 0, None)


def test_failures_retry_later_or_dead_letter_and_postponing_spends_no_attempt(
    source: JobSource, driver: QueueDriver
) -> None:
    _write(source, [_row("acme", n) for n in range(3)])
    retried, dead, later = _claim(source, _request(limit=3))
    retry_at = utcnow() + timedelta(hours=1)
    with source.engine().begin() as conn:
        assert driver.fail(conn, retried, ERROR, retry_at=retry_at)
        assert driver.fail(conn, dead, ERROR, retry_at=None, dead=True)
        assert driver.postpone(conn, later, retry_at)
        assert not driver.fail(conn, retried, ERROR, retry_at=None)  # not running any more
    row = _state(source, retried.id)
    assert (row.state, row.errors, row.lease_token) == ("retryable", [ERROR], None)
    assert _state(source, dead.id).state == JobState.DEAD.value
    assert _state(source, dead.id).finished_at is not None
    waiting = _state(source, later.id)
    assert (waiting.state, waiting.attempt) == ("scheduled", 0)


def test_due_jobs_are_staged_and_expired_leases_rescued(
    env: Env, source: JobSource, driver: QueueDriver
) -> None:
    (due,) = _write(source, [_row("acme", 1, state="scheduled")])
    (future,) = _write(
        source, [_row("acme", 2, state="scheduled", scheduled_at=utcnow() + timedelta(hours=1))]
    )
    with source.engine().begin() as conn:
        # Something was staged; the count itself is not exact everywhere
        # (SQLite reports -1 for an UPDATE that a WITH clause leads).
        assert driver.stage_due(conn) != 0
    assert _state(source, due).state == "available"
    assert _state(source, future).state == "scheduled"
    (job,) = _claim(source, _request(limit=1))
    env.set_columns("acme", job.id, lease_expires_at=utcnow() - timedelta(seconds=5))
    with source.engine().begin() as conn:
        assert driver.rescue_expired(conn) == [(job.id, JobState.AVAILABLE)]
        assert driver.rescue_expired(conn) == []
    assert [e["type"] for e in _state(source, job.id).errors] == ["LeaseExpired"]


def test_a_tenants_jobs_are_cancelled_deleted_and_finished_ones_pruned(
    env: Env, source: JobSource, driver: QueueDriver
) -> None:
    _write(source, [_row("acme", n) for n in range(3)])
    (other,) = _write(env.source("globex"), [_row("globex", 1)])
    with source.engine().begin() as conn:
        assert driver.cancel_tenant_jobs(conn, "acme") == 3
        assert driver.prune_finished(conn, timedelta(hours=1), 100) == 0
        assert driver.prune_finished(conn, timedelta(seconds=-60), 2) == 2
        assert driver.delete_tenant_jobs(conn, "acme") == 1
    assert env.total("acme") == 0
    assert _state(source, other).state == "available"


async def test_standalone_writes_commit_on_their_own(make_env: EnvFactory, backend: str) -> None:
    env = make_env(backend, "shared", noop_registry(), ("acme",))
    source = env.source("acme")
    driver = source.driver
    written = driver.write_standalone(source.enqueue_engine(), [_row("acme", 1)])
    many = driver.write_standalone(source.enqueue_engine(), [_row("acme", n) for n in range(3)])
    awritten = await driver.awrite_standalone(source.async_engine(), [_row("acme", 2)])
    ids = [i.id for i in [*written, *many, *awritten]]
    assert len(set(ids)) == 5
    assert all(_state(source, i).state == "available" for i in ids)


def test_a_claim_alone_on_its_connection_is_committed(
    source: JobSource, driver: QueueDriver
) -> None:
    _write(source, [_row("acme", n) for n in range(2)])
    alone = driver.claims_in_one_statement(fair=False)
    with driver.claim_connection(source.claim_engine(), alone=alone) as conn:
        jobs = driver.claim(conn, _request(limit=1, fair=False))
    with driver.claim_connection(source.claim_engine(), alone=False) as conn:
        assert driver.complete(conn, [(jobs[0].id, jobs[0].lease_token or "")]) == {jobs[0].id}
        more = driver.claim(conn, _request(limit=5))
    assert _state(source, jobs[0].id).state == JobState.COMPLETED.value
    assert [_state(source, j.id).state for j in more] == ["running"]
