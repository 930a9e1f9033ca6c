"""Enqueueing: atomic with the caller's transaction, validated, idempotent, placed per tenant."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from sqlalchemy import Connection, event, func, select

from tenantry import TenantThreadPoolExecutor, tenant_context
from tenantry.errors import (
    ConfigError,
    JobStateError,
    PayloadValidationError,
    TenantNotSetError,
    TenantSuspendedError,
    UnknownJobKind,
)
from tenantry.queue import EnqueuedJob, JobState, Queue
from tenantry.queue.schema import jobs_table as J
from tenantry.queue.sources import JobSource
from tests.conftest import TenantryFactory, modes_for
from tests.integration.queue.handlers import noop_registry
from tests.integration.queue.support import CASES, EnvFactory, build_env
from tests.models import Note


@CASES
def test_enqueue_in_session_exists_iff_the_session_commits(
    make_tenantry: TenantryFactory, backend: str, mode: str
) -> None:
    env = build_env(make_tenantry, backend, mode, noop_registry())
    with tenant_context("acme"):
        with env.t.session() as s:
            s.add(Note(body="rolled back"))
            job = env.queue.enqueue("record", {"n": 1}, session=s)
            assert job.created
            assert job.tenant_id == "acme"
            assert job.state is JobState.AVAILABLE
            s.flush()
            # Uncommitted: invisible to every other connection.
            assert env.raw_count("acme") == 0
            s.rollback()
        assert env.total("acme") == 0

        with env.t.session() as s:
            s.add(Note(body="committed"))
            job = env.queue.enqueue("record", {"n": 2}, session=s)
            s.commit()

    jobs = env.queue.admin.list_jobs(tenant_id="acme")
    assert [j.id for j in jobs] == [job.id]
    assert jobs[0].payload["n"] == 2
    assert jobs[0].state is JobState.AVAILABLE
    assert jobs[0].tenant_id == "acme"
    assert jobs[0].attempt == 0
    assert env.notes("acme") == ["committed"]
    assert env.total("globex") == 0


@CASES
async def test_aenqueue_in_async_session_exists_iff_the_session_commits(
    make_env: EnvFactory, backend: str, mode: str
) -> None:
    env = make_env(backend, mode, noop_registry())
    with pytest.raises(TenantNotSetError):
        await env.queue.aenqueue("record", {"n": 0})
    async with tenant_context("acme"):
        async with env.t.async_session() as s:
            s.add(Note(body="rolled back"))
            await env.queue.aenqueue("record", {"n": 1}, session=s)
            await s.flush()
            await s.rollback()
        assert env.total("acme") == 0

        async with env.t.async_session() as s:
            s.add(Note(body="committed"))
            many = await env.queue.aenqueue_many("record", [{"n": 2}, {"n": 3}], session=s)
            await s.commit()
        alone = await env.queue.aenqueue("other", {"n": 4})

    assert all(j.created for j in [*many, alone])
    listed = {j.id: j for j in env.queue.admin.list_jobs(tenant_id="acme")}
    assert set(listed) == {many[0].id, many[1].id, alone.id}
    assert listed[many[0].id].payload["n"] == 2
    assert listed[many[1].id].payload["n"] == 3
    assert listed[alone.id].kind == "other"
    assert env.notes("acme") == ["committed"]


@CASES
def test_refused_enqueues_write_nothing(
    make_tenantry: TenantryFactory, backend: str, mode: str
) -> None:
    env = build_env(make_tenantry, backend, mode, noop_registry())
    with pytest.raises(TenantNotSetError):
        env.queue.enqueue("record", {"n": 1})
    with pytest.raises(TenantNotSetError):
        env.queue.enqueue_many("record", [{"n": 1}])
    with tenant_context("acme"):
        with pytest.raises(UnknownJobKind):
            env.queue.enqueue("no_such_kind", {"n": 1})
        with pytest.raises(PayloadValidationError):
            env.queue.enqueue("record", {"n": "not a number"})
        with pytest.raises(PayloadValidationError):
            env.queue.enqueue("record", {"n": 1, "sleep": "soon"})
        with pytest.raises(TypeError, match="priorty"):
            env.queue.enqueue("record", {"n": 1}, priorty=5)  # type: ignore[call-arg]
        # One bad payload spoils the whole batch: nothing of it is written.
        with pytest.raises(PayloadValidationError):
            env.queue.enqueue_many("record", [{"n": 1}, {"n": 2}, {"n": "x"}])
        with env.t.session() as s:
            with pytest.raises(PayloadValidationError):
                env.queue.enqueue("record", {"n": "x"}, session=s)
            s.add(Note(body="unrelated"))
            s.commit()

    env.t.suspend_tenant("globex")
    with tenant_context("globex"), pytest.raises(TenantSuspendedError):
        env.queue.enqueue("record", {"n": 1})
    assert env.total("acme") == 0
    assert env.total("globex") == 0
    assert env.queue.admin.list_jobs() == []

    env.t.resume_tenant("globex")
    env.enqueue("globex", "record", {"n": 1})
    assert env.total("globex") == 1


@CASES
def test_enqueue_many_writes_all_rows_in_payload_order(
    make_tenantry: TenantryFactory, backend: str, mode: str
) -> None:
    env = build_env(make_tenantry, backend, mode, noop_registry())
    with tenant_context("acme"), env.t.session() as s:
        jobs = env.queue.enqueue_many("record", [{"n": i} for i in range(25)], session=s)
        s.commit()
    assert len(jobs) == 25
    assert all(j.created and j.tenant_id == "acme" for j in jobs)
    assert len({j.id for j in jobs}) == 25
    # Returned ids are in payload order.
    by_id = {j.id: j for j in env.queue.admin.list_jobs(tenant_id="acme", limit=100)}
    assert [by_id[j.id].payload["n"] for j in jobs] == list(range(25))
    assert env.counts("acme")["available"] == 25
    assert env.total("globex") == 0
    assert env.enqueue_many("globex", "record", []) == []
    assert env.total("globex") == 0


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_enqueue_many_is_a_single_insert_statement(
    make_tenantry: TenantryFactory, backend: str
) -> None:
    env = build_env(make_tenantry, backend, "shared", noop_registry())
    inserts: list[str] = []

    def spy(
        conn: Connection, cursor: Any, statement: str, params: Any, context: Any, many: bool
    ) -> None:
        # On PostgreSQL the INSERT sits in a CTE beside the NOTIFY (one statement).
        if "INSERT INTO" in statement.upper() and "tenantry_jobs" in statement:
            inserts.append(statement)

    with tenant_context("acme"), env.t.session() as s:
        event.listen(s.connection(), "before_cursor_execute", spy)
        jobs = env.queue.enqueue_many("record", [{"n": i} for i in range(25)], session=s)
        s.commit()
    assert len(jobs) == 25
    assert len(inserts) == 1, f"{len(inserts)} INSERT statements for 25 jobs"


@CASES
def test_idempotency_key_under_concurrency(
    make_tenantry: TenantryFactory, backend: str, mode: str
) -> None:
    env = build_env(make_tenantry, backend, mode, noop_registry())
    threads = 12
    barrier = threading.Barrier(threads)

    def attempt(i: int) -> EnqueuedJob:
        barrier.wait(timeout=20)
        return env.queue.enqueue("record", {"n": i}, idempotency_key="order-42")

    with tenant_context("acme"), TenantThreadPoolExecutor(max_workers=threads) as pool:
        results = list(pool.map(attempt, range(threads)))

    assert len({r.id for r in results}) == 1
    assert sum(r.created for r in results) == 1
    first = results[0].id
    assert env.total("acme") == 1
    assert env.job("acme", first).idempotency_key == "order-42"

    # While the job is unfinished the key keeps resolving to it.
    again = env.enqueue("acme", "record", {"n": 99}, idempotency_key="order-42")
    assert (again.id, again.created) == (first, False)

    # Another tenant with the same key gets its own job.
    other = env.enqueue("globex", "record", {"n": 1}, idempotency_key="order-42")
    assert other.created
    assert env.total("globex") == 1
    assert env.job("globex", other.id).tenant_id == "globex"

    # Once the job is finished the key is free: a NEW job.
    assert env.finish_directly("acme", 1) == [first]
    fresh = env.enqueue("acme", "record", {"n": 2}, idempotency_key="order-42")
    assert fresh.created
    assert fresh.id != first
    counts = env.counts("acme")
    assert (counts["completed"], counts["available"]) == (1, 1)
    assert env.total("acme") == 2


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_jobs_live_where_the_tenant_data_lives(
    make_tenantry: TenantryFactory, backend: str
) -> None:
    t = make_tenantry(backend)
    modes = modes_for(backend)
    for mode in modes:
        t.create_tenant(f"t_{mode}", isolation=mode)
    env_queue = Queue(t, noop_registry())
    env_queue.setup()
    for mode in modes:
        with tenant_context(f"t_{mode}"):
            env_queue.enqueue("record", {"n": 1})

    store = t.default_store
    store_source = JobSource(store)
    db_source = env_queue.admin.source_for("t_database")
    assert db_source.tenant_id == "t_database"
    expected_db = store.tenant_database_name("t_database")
    url = db_source.engine().url
    if backend == "sqlite":  # opened read-write only: a worker must never create the file
        assert url.database == f"file:{expected_db}"
        assert url.query == {"mode": "rw", "uri": "true"}
    else:
        assert url.database == expected_db
    assert store_source.engine().url.database != expected_db

    def tenants_in(source: JobSource) -> list[str]:
        with source.engine().connect() as conn:
            return sorted(conn.scalars(select(J.c.tenant_id)))

    assert tenants_in(db_source) == ["t_database"]
    assert tenants_in(store_source) == sorted(f"t_{m}" for m in modes if m != "database")
    for mode in modes:
        if mode != "database":
            assert env_queue.admin.source_for(f"t_{mode}").key == store_source.key
    assert sorted(s.key for s in env_queue.admin.sources()) == sorted(
        {store_source.key, db_source.key}
    )
    # Operations reach every table.
    with store_source.engine().connect() as conn:
        assert conn.scalar(select(func.count()).select_from(J)) == len(modes) - 1
    assert sorted(j.tenant_id for j in env_queue.admin.list_jobs()) == sorted(
        f"t_{m}" for m in modes
    )


def test_a_duplicate_describes_the_job_holding_the_key(
    make_tenantry: TenantryFactory, backend: str
) -> None:
    env = build_env(make_tenantry, backend, "shared", noop_registry())
    first = env.enqueue("acme", "record", {"n": 1}, idempotency_key="k", delay=3600)
    assert (first.created, first.state) == (True, JobState.SCHEDULED)
    dup = env.enqueue("acme", "other", {"n": 2}, idempotency_key="k", queue="elsewhere")
    assert (dup.id, dup.created) == (first.id, False)
    assert env.total("acme") == 1
    assert (dup.kind, dup.queue, dup.state) == ("record", "default", JobState.SCHEDULED)


def test_a_finished_holder_frees_the_key_and_requeue_conflicts_are_refused(
    make_tenantry: TenantryFactory, backend: str
) -> None:
    env = build_env(make_tenantry, backend, "shared", noop_registry())
    first = env.enqueue("acme", "record", {"n": 1}, idempotency_key="k", delay=3600)
    dup = env.enqueue("acme", "other", {"n": 2}, idempotency_key="k")
    assert (dup.id, dup.created) == (first.id, False)
    assert env.job("acme", first.id).payload["n"] == 1

    # Cancelling (finishing) the holder frees the key.
    env.queue.admin.cancel_job("acme", first.id)
    fresh = env.enqueue("acme", "other", {"n": 3}, idempotency_key="k")
    assert fresh.created
    assert fresh.id != first.id
    assert (fresh.kind, fresh.state) == ("other", JobState.AVAILABLE)
    # A requeue that would make two unfinished jobs share the key is refused...
    with pytest.raises(JobStateError):
        env.queue.admin.retry_job("acme", first.id)
    assert env.state("acme", first.id) is JobState.CANCELLED
    # ...and retry_dead leaves such a job dead while requeueing the others.
    source = env.source("acme")
    for job_id in (first.id, env.enqueue("acme", "record", {"n": 4}).id):
        env.set_columns("acme", job_id, state="dead", finished_at=source.driver.now())
    assert env.queue.admin.retry_dead("acme") == 1
    assert env.state("acme", first.id) is JobState.DEAD
    assert env.counts("acme")["available"] == 2


@pytest.mark.parametrize("outcome", ["commit", "rollback"])
def test_keyed_enqueue_waits_for_an_uncommitted_holder(
    make_tenantry: TenantryFactory, backend: str, outcome: str
) -> None:
    env = build_env(make_tenantry, backend, "shared", noop_registry())
    with tenant_context("acme"), TenantThreadPoolExecutor(max_workers=1) as pool:
        with env.t.session() as s:
            holder = env.queue.enqueue("record", {"n": 1}, session=s, idempotency_key="k")
            second = pool.submit(env.queue.enqueue, "record", {"n": 2}, idempotency_key="k")
            time.sleep(0.3)
            assert not second.done()  # it waits for the holder's transaction
            if outcome == "commit":
                s.commit()
            else:
                s.rollback()
        result = second.result(timeout=20)
    jobs = env.queue.admin.list_jobs(tenant_id="acme")
    assert len(jobs) == 1
    if outcome == "commit":
        assert (result.id, result.created) == (holder.id, False)
        assert jobs[0].payload["n"] == 1
    else:
        assert result.created
        assert jobs[0].id == result.id
        assert jobs[0].payload["n"] == 2


def test_bulk_rows_round_trip_every_value_type(
    make_tenantry: TenantryFactory, backend: str
) -> None:
    """The plain-SQL bulk path stores exactly what the typed single-row path stores."""
    from datetime import UTC, datetime, timedelta

    from tenantry import JobContext, JobRegistry, Queue, tenant_context

    registry = JobRegistry()

    @registry.handler("text")
    def text_job(ctx: JobContext, payload: str) -> None:
        return None

    @registry.handler("doc")
    def doc_job(ctx: JobContext, payload: dict[str, object]) -> None:
        return None

    t = make_tenantry(backend)
    t.create_tenant("acme")
    queue = Queue(t, registry)
    queue.setup()
    run_at = datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    with tenant_context("acme"):
        texts = queue.enqueue_many("text", ["plain", 'quo"te', "", "ünï©ødé"], run_at=run_at)
        docs = queue.enqueue_many(
            "doc", [{"a": [1, 2.5, None]}, {}, {"nested": {"x": "y"}}], delay=timedelta(0)
        )
        single = queue.enqueue("text", "plain", run_at=run_at)
    got = [queue.admin.get_job("acme", j.id) for j in texts]
    assert [j.payload for j in got] == ["plain", 'quo"te', "", "ünï©ødé"]
    assert all(j.scheduled_at == run_at for j in got)
    assert queue.admin.get_job("acme", single.id).scheduled_at == run_at
    assert [queue.admin.get_job("acme", j.id).payload for j in docs] == [
        {"a": [1, 2.5, None]},
        {},
        {"nested": {"x": "y"}},
    ]
    assert all(queue.admin.get_job("acme", j.id).errors == [] for j in docs)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_overlong_queue_names_and_correlation_ids_are_refused_up_front(
    make_tenantry: TenantryFactory, backend: str
) -> None:
    """They were written as given: a database error on PostgreSQL, silently kept on SQLite."""
    env = build_env(make_tenantry, backend, "shared", noop_registry())
    with tenant_context("acme"):
        refused: list[dict[str, Any]] = [
            {"queue": "q" * 101},
            {"queue": ""},
            {"correlation_id": "c" * 201},
        ]
        for options in refused:
            with pytest.raises(ConfigError):
                env.queue.enqueue("record", {"n": 1}, **options)
        env.queue.enqueue("record", {"n": 1}, queue="q" * 100, correlation_id="c" * 200)
    assert env.total("acme") == 1
