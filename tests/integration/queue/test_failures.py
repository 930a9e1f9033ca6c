"""Failures: retries with backoff, dead-lettering, poison jobs, timeouts."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from uuid import UUID, uuid4

import pytest
from pydantic import BaseModel, ConfigDict

from tenantry.queue import JobContext, JobRegistry, JobState, RetryPolicy
from tenantry.queue.drivers import ClaimRequest
from tests.conftest import TenantryFactory
from tests.integration.queue.handlers import Item, Recorder
from tests.integration.queue.support import (
    CASES,
    EnvFactory,
    build_env,
    running,
    seconds_between,
    wait_until,
)


def _at(error: dict[str, object]) -> datetime:
    return datetime.fromisoformat(str(error["at"]))


@CASES
async def test_retry_with_backoff_then_success(
    make_env: EnvFactory, backend: str, mode: str
) -> None:
    rec = Recorder()
    registry = JobRegistry()

    @registry.handler("flaky", retry=RetryPolicy(max_attempts=5, base=0.2, factor=2, jitter=0))
    async def flaky(ctx: JobContext, payload: Item) -> None:
        if rec.hit(ctx) <= 2:
            raise RuntimeError(f"flaky failure {ctx.attempt}")

    env = make_env(backend, mode, registry)
    job = env.enqueue("globex", "flaky", {"n": 1})
    worker = env.worker()
    async with running(worker):
        # The row right after the first failure: a retry scheduled 0.2 s later.
        await wait_until(lambda: len(env.job("globex", job.id).errors) >= 1, 10)
        after_first = await env.ajob("globex", job.id)
        await wait_until(lambda: env.state("globex", job.id) is JobState.COMPLETED, 10)

    # (Normally read before the second failure; if not, the second retry is what is due.)
    failures = len(after_first.errors)
    assert after_first.errors[-1]["attempt"] == failures
    delay = seconds_between(after_first.scheduled_at, _at(after_first.errors[-1]))
    assert delay == pytest.approx(0.2 * 2 ** (failures - 1), abs=0.05)

    done = env.job("globex", job.id)
    assert done.state is JobState.COMPLETED
    assert done.attempt == 3
    assert done.finished_at is not None
    assert [e["attempt"] for e in done.errors] == [1, 2]
    assert [e["type"] for e in done.errors] == ["RuntimeError", "RuntimeError"]
    assert [e["message"] for e in done.errors] == ["flaky failure 1", "flaky failure 2"]
    for error in done.errors:
        assert "RuntimeError: flaky failure" in str(error["traceback"])
        assert "in flaky" in str(error["traceback"])
    assert rec.count("globex", job.id) == 3
    assert worker.stats.retried == 2
    assert worker.stats.completed == 1

    # Each run saw the row as claimed: due time, previous errors, attempt number.
    second, third = rec.snapshots[1], rec.snapshots[2]
    assert (second.attempt, third.attempt) == (2, 3)
    assert seconds_between(second.scheduled_at, _at(second.errors[0])) == pytest.approx(
        0.2, abs=0.05
    )
    assert seconds_between(third.scheduled_at, _at(third.errors[1])) == pytest.approx(0.4, abs=0.05)
    for snap in (second, third):
        # Never run before its retry was due.
        assert seconds_between(snap.attempted_at, snap.scheduled_at) >= -0.01
    assert done.scheduled_at == third.scheduled_at


@CASES
async def test_dead_letter_then_manual_retry(make_env: EnvFactory, backend: str, mode: str) -> None:
    rec = Recorder()
    behaviour = {"fail": True}
    registry = JobRegistry()

    @registry.handler("boom", retry=RetryPolicy(max_attempts=3, base=0.05, factor=1, jitter=0))
    def boom(ctx: JobContext, payload: Item) -> None:
        rec.hit(ctx)
        if behaviour["fail"]:
            raise ValueError(f"boom on attempt {ctx.attempt}")

    env = make_env(backend, mode, registry)
    job = env.enqueue("acme", "boom", {"n": 1})
    bystander = env.enqueue("globex", "boom", {"n": 2}, max_attempts=1)
    worker = env.worker()
    async with running(worker):
        await wait_until(lambda: env.state("acme", job.id) is JobState.DEAD, 10)
        await wait_until(lambda: env.state("globex", bystander.id) is JobState.DEAD, 10)
        dead = await env.ajob("acme", job.id)
        assert dead.attempt == 3
        assert dead.max_attempts == 3
        assert dead.finished_at is not None
        assert dead.lease_token is None
        assert [e["attempt"] for e in dead.errors] == [1, 2, 3]
        assert {e["type"] for e in dead.errors} == {"ValueError"}
        assert rec.count("acme", job.id) == 3
        assert rec.count("globex", bystander.id) == 1

        behaviour["fail"] = False
        revived = await asyncio.to_thread(env.queue.admin.retry_job, "acme", job.id)
        assert revived.state is JobState.AVAILABLE
        assert revived.max_attempts == 4
        assert revived.finished_at is None
        await wait_until(lambda: env.state("acme", job.id) is JobState.COMPLETED, 10)

    final = env.job("acme", job.id)
    assert final.attempt == 4
    assert len(final.errors) == 3
    assert rec.count("acme", job.id) == 4
    assert env.state("globex", bystander.id) is JobState.DEAD  # other tenants untouched
    assert worker.stats.dead == 2


@CASES
def test_retry_dead_requeues_one_tenants_dead_jobs(
    make_tenantry: TenantryFactory, backend: str, mode: str
) -> None:
    registry = JobRegistry()

    @registry.handler("boom")
    def boom(ctx: JobContext, payload: Item) -> None:
        raise ValueError("never runs here")

    env = build_env(make_tenantry, backend, mode, registry)
    acme = [j.id for j in env.enqueue_many("acme", "boom", [{"n": i} for i in range(3)])]
    globex = [j.id for j in env.enqueue_many("globex", "boom", [{"n": i} for i in range(2)])]
    error = {"at": "x", "attempt": 1, "type": "ValueError", "message": "m", "traceback": ""}
    for tid in ("acme", "globex"):
        source = env.source(tid)
        with source.engine().begin() as conn:
            claimed = source.driver.claim(
                conn,
                ClaimRequest(
                    worker_id="t", queues=["default"], limit=10, lease_seconds=30, tenants=[tid]
                ),
            )
            for job in claimed:
                assert source.driver.fail(conn, job, error, retry_at=None, dead=True)
    alive = env.enqueue("acme", "boom", {"n": 9})
    assert env.counts("acme")["dead"] == 3
    assert env.counts("globex")["dead"] == 2

    assert env.queue.admin.retry_dead("acme") == 3
    for job_id in acme:
        job = env.job("acme", job_id)
        assert job.state is JobState.AVAILABLE
        assert job.finished_at is None
        assert job.max_attempts >= job.attempt + 1
    assert [env.state("globex", i) for i in globex] == [JobState.DEAD, JobState.DEAD]
    assert env.state("acme", alive.id) is JobState.AVAILABLE
    assert env.queue.admin.retry_dead("acme") == 0
    assert env.queue.admin.retry_dead("globex") == 2


@CASES
async def test_poison_payload_and_unknown_kind_are_dead_at_once(
    make_env: EnvFactory, backend: str, mode: str
) -> None:
    rec = Recorder()
    registry = JobRegistry()

    @registry.handler("strict")
    async def strict(ctx: JobContext, payload: Item) -> None:
        rec.hit(ctx)

    @registry.handler("ghost")
    async def ghost(ctx: JobContext, payload: Item) -> None:
        rec.hit(ctx)

    worker_registry = JobRegistry()  # the worker's code no longer knows "ghost"

    @worker_registry.handler("strict")
    async def strict_again(ctx: JobContext, payload: Item) -> None:
        rec.hit(ctx)

    env = make_env(backend, mode, registry)
    poison = env.enqueue("acme", "strict", {"n": 1})
    # The row was written by older code, or by hand: its payload no longer validates.
    env.set_columns("acme", poison.id, payload={"n": "not a number"})
    orphan = env.enqueue("acme", "ghost", {"n": 2})
    healthy = env.enqueue("acme", "strict", {"n": 3})

    worker = env.worker(registry=worker_registry)
    async with running(worker):
        await wait_until(
            lambda: (
                [env.state("acme", j.id) for j in (poison, orphan, healthy)]
                == [JobState.DEAD, JobState.DEAD, JobState.COMPLETED]
            ),
            10,
        )

    for job_id, error_type in (
        (poison.id, "PayloadValidationError"),
        (orphan.id, "UnknownJobKind"),
    ):
        job = env.job("acme", job_id)
        assert job.attempt == 1
        assert job.max_attempts == 20  # attempts were left: dead because retrying cannot help
        assert job.finished_at is not None
        assert [e["type"] for e in job.errors] == [error_type]
        assert job.errors[0]["attempt"] == 1
    assert "ghost" in str(env.job("acme", orphan.id).errors[0]["message"])
    assert set(rec.calls) == {("acme", healthy.id)}
    assert worker.stats.dead == 2


async def test_timeout_fails_the_attempt_and_dead_letters(
    make_env: EnvFactory, backend: str
) -> None:
    rec = Recorder()
    registry = JobRegistry()

    @registry.handler("sleepy", timeout=0.3, retry=RetryPolicy(max_attempts=2, base=0.05, jitter=0))
    async def sleepy(ctx: JobContext, payload: Item) -> None:
        rec.hit(ctx)
        await asyncio.sleep(5)
        rec.done(ctx)

    env = make_env(backend, "shared", registry)
    job = env.enqueue("acme", "sleepy", {"n": 1})
    worker = env.worker()
    async with running(worker):
        await wait_until(lambda: env.state("acme", job.id) is JobState.DEAD, 10)
    dead = env.job("acme", job.id)
    assert dead.attempt == 2
    assert [e["type"] for e in dead.errors] == ["JobTimeoutError", "JobTimeoutError"]
    assert all("timeout" in str(e["message"]) for e in dead.errors)
    assert rec.count("acme", job.id) == 2
    assert not rec.finished
    assert (worker.stats.retried, worker.stats.dead) == (1, 1)


@pytest.mark.parametrize("timeout", [None, 5.0])
async def test_a_timeout_error_raised_by_the_handler_is_an_ordinary_failure(
    make_env: EnvFactory, backend: str, timeout: float | None
) -> None:
    # A TimeoutError from the handler itself must neither leave the job
    # 'running' forever nor, with timeout=, be reported as JobTimeoutError.
    registry = JobRegistry()

    @registry.handler("upstream", max_attempts=1, timeout=timeout)
    async def upstream(ctx: JobContext, payload: Item) -> None:
        raise TimeoutError("the upstream API timed out")

    env = make_env(backend, "shared", registry)
    job = env.enqueue("acme", "upstream", {"n": 1})
    worker = env.worker()
    async with running(worker):
        await wait_until(lambda: env.state("acme", job.id) is JobState.DEAD, 5)
    dead = env.job("acme", job.id)
    assert [e["type"] for e in dead.errors] == ["TimeoutError"]
    assert dead.errors[0]["message"] == "the upstream API timed out"
    assert dead.attempt == 1
    assert worker.stats.dead == 1


class Stamped(BaseModel):
    """A strict model: Python-mode validation refuses its fields' JSON forms."""

    model_config = ConfigDict(strict=True)
    at: datetime
    blob: bytes
    ref: UUID


@CASES
async def test_a_strict_model_payload_is_read_back_as_it_was_enqueued(
    make_env: EnvFactory, backend: str, mode: str
) -> None:
    """Stored as JSON, its datetime, bytes and UUID are strings; the worker reads JSON.

    Decoding to Python objects first and validating those (as the worker did)
    refused every field, and such jobs went dead as poison.
    """
    seen: list[tuple[Stamped, object]] = []
    registry = JobRegistry()

    @registry.handler("stamped")
    async def stamped(ctx: JobContext, payload: Stamped) -> None:
        seen.append((payload, ctx.job.payload))

    env = make_env(backend, mode, registry)
    sent = Stamped(at=datetime(2026, 11, 29, 5, 30, tzinfo=UTC), blob=b'a\\b"c', ref=uuid4())
    job = env.enqueue("acme", "stamped", sent)
    async with running(env.worker()):
        await wait_until(lambda: env.state("acme", job.id) is JobState.COMPLETED, 10)
    ((got, raw),) = seen
    assert got == sent
    assert raw == sent.model_dump(mode="json")  # the job's payload: the stored JSON, decoded
