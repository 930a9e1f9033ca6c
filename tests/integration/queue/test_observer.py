"""The worker's observer hook: what ``tenantry serve`` turns into Prometheus metrics."""

from __future__ import annotations

from collections.abc import Sequence

from tenantry.queue import Job, JobContext, JobRegistry, RetryPolicy
from tests.integration.queue.handlers import Item
from tests.integration.queue.support import EnvFactory, running, wait_until


class Seen:
    def __init__(self) -> None:
        self.claims: list[tuple[int, float]] = []
        self.handlers: list[tuple[str, str | None, float]] = []
        self.outcomes: list[tuple[str, str, str]] = []

    def claimed(self, jobs: Sequence[Job], seconds: float) -> None:
        self.claims.append((len(jobs), seconds))

    def handler_finished(self, job: Job, seconds: float, error: BaseException | None) -> None:
        self.handlers.append((job.kind, None if error is None else type(error).__name__, seconds))

    def outcome(self, job: Job, outcome: str) -> None:
        self.outcomes.append((job.tenant_id, job.kind, outcome))


def registry() -> JobRegistry:
    reg = JobRegistry(default_retry=RetryPolicy(max_attempts=2, base=0.01, jitter=0))

    @reg.handler("ok")
    def ok(ctx: JobContext, payload: Item) -> None:
        pass

    @reg.handler("ok_tx", transactional=True)
    def ok_tx(ctx: JobContext, payload: Item) -> None:
        pass

    @reg.handler("boom")
    def boom(ctx: JobContext, payload: Item) -> None:
        raise RuntimeError("boom")

    return reg


async def test_observer_sees_claims_durations_and_every_outcome(make_env: EnvFactory) -> None:
    env = make_env("sqlite", "shared", registry())
    env.enqueue("acme", "ok", {})
    env.enqueue("acme", "ok_tx", {})
    env.enqueue("globex", "boom", {})
    seen = Seen()
    worker = env.worker(observer=seen)
    async with running(worker):
        await wait_until(lambda: env.counts("globex")["dead"] == 1, what="boom dead")
        await wait_until(lambda: env.counts("acme")["completed"] == 2, what="ok jobs done")
        await wait_until(lambda: len(seen.outcomes) == 4, what="outcomes observed")
    assert sorted(seen.outcomes) == [
        ("acme", "ok", "completed"),
        ("acme", "ok_tx", "completed"),
        ("globex", "boom", "dead"),
        ("globex", "boom", "retried"),
    ]
    assert sorted((k, e) for k, e, _ in seen.handlers) == [
        ("boom", "RuntimeError"),
        ("boom", "RuntimeError"),
        ("ok", None),
        ("ok_tx", None),
    ]
    assert all(s >= 0 for *_, s in seen.handlers)
    assert sum(n for n, _ in seen.claims) == 4  # three jobs, one of them twice
    assert all(s > 0 for _, s in seen.claims)


async def test_a_failing_observer_does_not_stop_jobs(make_env: EnvFactory) -> None:
    class Broken(Seen):
        def outcome(self, job: Job, outcome: str) -> None:
            raise ValueError("metrics bug")

    env = make_env("sqlite", "shared", registry())
    jobs = env.enqueue_many("acme", "ok", [{"n": i} for i in range(5)])
    worker = env.worker(observer=Broken())
    async with running(worker):
        await wait_until(lambda: env.counts("acme")["completed"] == 5, what="jobs done")
    assert {env.state("acme", j.id).value for j in jobs} == {"completed"}
