"""The operations API: list, count, get, cancel, purge and prune, across every source."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest

from tenantry import tenant_context
from tenantry.errors import JobNotFoundError, JobStateError
from tenantry.queue import JobState
from tests.conftest import TenantryFactory
from tests.integration.queue.handlers import Recorder, noop_registry, recording_registry
from tests.integration.queue.support import CASES, EnvFactory, build_env, running, wait_until
from tests.models import Note


@CASES
def test_list_count_and_get_filter_by_tenant_state_and_kind(
    make_tenantry: TenantryFactory, backend: str, mode: str
) -> None:
    env = build_env(make_tenantry, backend, mode, noop_registry())
    acme = [j.id for j in env.enqueue_many("acme", "record", [{"n": i} for i in range(5)])]
    acme += [j.id for j in env.enqueue_many("acme", "other", [{"n": i} for i in range(3)])]
    globex = [j.id for j in env.enqueue_many("globex", "record", [{"n": 1}, {"n": 2}])]
    finished = env.finish_directly("acme", 2)
    assert finished == acme[:2]

    everything = env.queue.admin.list_jobs(tenant_id="acme")
    assert len(everything) == 8
    assert {j.tenant_id for j in everything} == {"acme"}
    # Newest first.
    order = [(j.created_at, j.id) for j in everything]
    assert order == sorted(order, reverse=True)
    assert {j.id for j in env.queue.admin.list_jobs(tenant_id="acme", kind="other")} == set(
        acme[5:]
    )
    assert {j.id for j in env.queue.admin.list_jobs(tenant_id="acme", state="completed")} == set(
        finished
    )
    assert {
        j.id
        for j in env.queue.admin.list_jobs(
            tenant_id="acme", state=JobState.AVAILABLE, kind="record"
        )
    } == set(acme[2:5])
    page = env.queue.admin.list_jobs(tenant_id="acme", limit=3, offset=2)
    assert [j.id for j in page] == [j.id for j in everything[2:5]]
    assert env.queue.admin.list_jobs(tenant_id="acme", limit=5, offset=8) == []
    assert [j.id for j in env.queue.admin.list_jobs(tenant_id="globex")] == sorted(
        globex, reverse=True
    )

    # Across every source (database-mode tenants each have their own).
    all_jobs = env.queue.admin.list_jobs()
    assert sorted((j.tenant_id, j.id) for j in all_jobs) == sorted(
        [("acme", i) for i in acme] + [("globex", i) for i in globex]
    )
    keys = [(j.tenant_id, j.id) for j in all_jobs]
    assert [(j.tenant_id, j.id) for j in env.queue.admin.list_jobs(limit=4, offset=3)] == keys[3:7]
    assert {j.tenant_id for j in env.queue.admin.list_jobs(kind="record")} == {"acme", "globex"}
    assert len(env.queue.admin.list_jobs(kind="record")) == 7
    assert len(env.queue.admin.list_jobs(state="completed")) == 2

    counts = env.queue.admin.count_jobs(tenant_id="acme")
    assert counts == {s.value: 0 for s in JobState} | {"available": 6, "completed": 2}
    assert env.queue.admin.count_jobs(tenant_id="globex")["available"] == 2
    total = env.queue.admin.count_jobs()
    assert (total["available"], total["completed"], sum(total.values())) == (8, 2, 10)

    job = env.job("acme", acme[-1])
    assert (job.id, job.tenant_id, job.kind, job.state) == (
        acme[-1],
        "acme",
        "other",
        JobState.AVAILABLE,
    )
    # acme's newest id exists in no other tenant's table, whatever the mode.
    with pytest.raises(JobNotFoundError):
        env.job("globex", acme[-1])
    with pytest.raises(JobNotFoundError):
        env.job("acme", 10_000_000)

    with pytest.raises(JobStateError):
        env.queue.admin.cancel_job("acme", finished[0])
    with pytest.raises(JobNotFoundError):
        env.queue.admin.cancel_job("acme", 10_000_000)
    with pytest.raises(JobNotFoundError):
        env.queue.admin.cancel_job("globex", acme[-1])
    assert env.state("acme", acme[-1]) is JobState.AVAILABLE


async def test_cancelled_job_never_runs(make_env: EnvFactory, backend: str) -> None:
    rec = Recorder()
    env = make_env(backend, "shared", recording_registry(rec))
    doomed = env.enqueue("acme", "work", {"n": 1})
    cancelled = env.queue.admin.cancel_job("acme", doomed.id)
    assert cancelled.state is JobState.CANCELLED
    assert cancelled.finished_at is not None
    with pytest.raises(JobStateError):
        env.queue.admin.cancel_job("acme", doomed.id)
    later = env.enqueue("acme", "work", {"n": 2})
    async with running(env.worker()):
        await wait_until(lambda: env.state("acme", later.id) is JobState.COMPLETED, 10)
        await wait_until(lambda: env.counts("acme")["available"] == 0, 5)
    assert rec.count("acme", later.id) == 1
    assert rec.count("acme", doomed.id) == 0
    assert env.state("acme", doomed.id) is JobState.CANCELLED


@CASES
def test_purge_deletes_only_finished_jobs(
    make_tenantry: TenantryFactory, backend: str, mode: str
) -> None:
    env = build_env(make_tenantry, backend, mode, noop_registry())
    env.enqueue_many("acme", "record", [{"n": i} for i in range(5)])
    env.enqueue_many("globex", "record", [{"n": i} for i in range(3)])
    env.finish_directly("acme", 2)
    env.finish_directly("globex", 1)
    waiting = env.enqueue("acme", "record", {"n": 9}, delay=3600)
    cancel_me = env.enqueue("acme", "record", {"n": 10})
    env.queue.admin.cancel_job("acme", cancel_me.id)

    with pytest.raises(JobStateError):
        env.queue.admin.purge(states=[JobState.AVAILABLE])
    assert env.queue.admin.purge(tenant_id="acme") == 3  # 2 completed + 1 cancelled
    assert env.counts("acme") == {s.value: 0 for s in JobState} | {"available": 3, "scheduled": 1}
    assert env.counts("globex")["completed"] == 1
    assert env.state("acme", waiting.id) is JobState.SCHEDULED

    assert env.queue.admin.purge(states=[JobState.DEAD]) == 0
    assert env.queue.admin.purge() == 1
    assert env.counts("globex") == {s.value: 0 for s in JobState} | {"available": 2}
    assert env.total("acme") == 4
    assert env.queue.admin.purge() == 0


@CASES
def test_prune_deletes_old_finished_jobs_in_batches(
    make_tenantry: TenantryFactory, backend: str, mode: str
) -> None:
    env = build_env(make_tenantry, backend, mode, noop_registry())
    env.enqueue_many("acme", "record", [{"n": i} for i in range(20)])
    env.finish_directly("acme", 20)
    env.enqueue_many("acme", "record", [{"n": i} for i in range(2)])
    env.enqueue_many("globex", "record", [{"n": i} for i in range(3)])
    time.sleep(0.01)

    assert env.queue.admin.prune(older_than=timedelta(hours=1)) == 0
    # Each batch is one bounded DELETE: two batches of 7 leave 6 behind.
    assert env.queue.admin.prune(older_than=timedelta(0), batch_size=7, max_batches=2) == 14
    assert env.counts("acme")["completed"] == 6
    assert env.queue.admin.prune(older_than=timedelta(0), batch_size=7) == 6
    assert env.counts("acme") == {s.value: 0 for s in JobState} | {"available": 2}
    assert env.counts("globex") == {s.value: 0 for s in JobState} | {"available": 3}
    assert env.queue.admin.prune(older_than=timedelta(0), batch_size=7) == 0


def test_read_operations_do_not_wait_for_an_open_writer(
    make_tenantry: TenantryFactory, backend: str
) -> None:
    # On SQLite get/list/count must not BEGIN IMMEDIATE: that would queue
    # behind (or time out on) any open writer.
    env = build_env(make_tenantry, backend, "shared", noop_registry())
    existing = env.enqueue("acme", "record", {"n": 1})
    seen: dict[str, float | int] = {}

    def read() -> None:
        start = time.monotonic()
        seen["count"] = env.total("acme")
        seen["listed"] = len(env.queue.admin.list_jobs(tenant_id="acme"))
        seen["got"] = env.job("acme", existing.id).id
        seen["elapsed"] = time.monotonic() - start

    with tenant_context("acme"), env.t.session() as s:
        s.add(Note(body="held open"))
        env.queue.enqueue("record", {"n": 2}, session=s)
        s.flush()  # this transaction now holds its write locks
        reader = threading.Thread(target=read)
        reader.start()
        reader.join(timeout=1.5)
        s.commit()
    reader.join(timeout=20)
    assert seen.get("elapsed") is not None
    assert seen["elapsed"] < 1.0, f"reads waited {seen['elapsed']:.2f}s for the writer"
    # The reader saw the committed state only.
    assert (seen["count"], seen["listed"], seen["got"]) == (1, 1, existing.id)
