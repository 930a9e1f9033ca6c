"""Per-tenant limits: ``max_running`` and the ``rate`` token bucket, on real databases.

In-process tests use one or two :class:`Worker` objects; the multi-process test
(slow, PostgreSQL) runs three ``tenantry worker`` subprocesses and checks the
intervals their handlers recorded. Each limit check is paired with an unlimited
tenant that does break the same bound, so the check can fail.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from tenantry import Tenantry, tenant_context
from tenantry.errors import ConfigError, TenantNotFoundError
from tenantry.queue import JobState, Queue
from tenantry.queue.drivers import ClaimRequest
from tenantry.queue.drivers import sqlite as sqlite_driver
from tenantry.queue.job import as_utc, utcnow
from tests.conftest import TenantryFactory
from tests.integration.faults.conftest import FleetFactory
from tests.integration.faults.conftest import make_fleet as make_fleet  # the fixture
from tests.integration.faults.harness import wait_until as wait_blocking
from tests.integration.queue.handlers import noop_registry
from tests.integration.queue.support import CASES, Env, EnvFactory, build_env, running, wait_until
from tests.integration.queue.tenant_support import (
    JOB_TABLE_CASES,
    Timeline,
    attempted_times,
    compared,
    control_row,
    max_overlap,
    rate_violations,
    tenant_state,
    timeline_registry,
    wanted_control,
)
from tests.models import Note
from tests.queue_app import SpanPayload
from tests.queue_app import registry as app_registry

SHARED_BACKENDS = pytest.mark.parametrize(
    ("backend", "mode"), [("sqlite", "shared"), ("postgresql", "shared")]
)


def _claim(env: Env, tenant_id: str, limit: int = 10) -> list[int]:
    source = env.source(tenant_id)
    with source.engine().begin() as conn:
        jobs = source.driver.claim(
            conn,
            ClaimRequest(
                worker_id="w",
                queues=["default"],
                limit=limit,
                lease_seconds=30,
                tenants=None if source.tenant_id else [tenant_id],
                fair=True,
            ),
        )
    assert {j.tenant_id for j in jobs} <= {tenant_id}
    return [j.id for j in jobs]


def _complete(env: Env, tenant_id: str, job_ids: Sequence[int]) -> None:
    source = env.source(tenant_id)
    jobs = [env.job(tenant_id, i) for i in job_ids]
    with source.engine().begin() as conn:
        done = source.driver.complete(conn, [(j.id, j.lease_token or "") for j in jobs])
    assert done == set(job_ids)


# -- settings -------------------------------------------------------------------------------
@SHARED_BACKENDS
def test_invalid_queue_settings_change_nothing(
    make_tenantry: TenantryFactory, backend: str, mode: str
) -> None:
    env = build_env(make_tenantry, backend, mode, noop_registry(), ("acme",))
    good = {"queue": {"weight": 2, "max_running": 3}, "plan": "pro"}
    env.t.update_tenant("acme", settings=good)
    before = control_row(env, "acme")
    for bad in ({"weight": 0}, {"rate": -1}, {"burst": 2}, {"speed": 1}, {"rate": float("nan")}):
        with pytest.raises(ConfigError):
            env.t.update_tenant("acme", settings={"queue": bad})
        with pytest.raises(ConfigError):
            env.t.create_tenant("newco", settings={"queue": bad})
        with pytest.raises(TenantNotFoundError):
            env.t.get_tenant("newco")
    assert env.t.get_tenant("acme").settings == good
    assert control_row(env, "acme") == before
    assert compared(before) == wanted_control(weight=2, max_running=3)
    created = env.t.create_tenant("newco", settings={"queue": {"rate": 0.5}})
    assert created.settings == {"queue": {"rate": 0.5}}
    # A rate alone gets a burst of one second's worth, at least 1.
    assert compared(control_row(env, "newco")) == wanted_control(rate=0.5, burst=1.0)


@CASES
def test_claims_honour_limits_and_pauses_in_every_jobs_table(
    make_tenantry: TenantryFactory, backend: str, mode: str
) -> None:
    """Direct claims on each tenant's own source (a tenant database in database mode)."""
    env = build_env(make_tenantry, backend, mode, noop_registry(), ("acme", "globex", "initech"))
    env.t.update_tenant("acme", settings={"queue": {"max_running": 2}})
    env.t.update_tenant("globex", settings={"queue": {"rate": 0.001, "burst": 3}})
    for tenant_id in env.tenants:
        env.enqueue_many(tenant_id, "record", [{"n": i} for i in range(6)])
    env.t.suspend_tenant("initech")

    first = _claim(env, "acme")
    assert len(first) == 2
    assert _claim(env, "acme") == []
    _complete(env, "acme", first[:1])
    assert len(_claim(env, "acme")) == 1
    assert tenant_state(env, "acme").running == 2

    assert len(_claim(env, "globex", limit=2)) == 2
    assert len(_claim(env, "globex")) == 1  # the third token
    assert _claim(env, "globex") == []  # the bucket is empty for ~1000 s
    env.t.update_tenant("globex", settings={"queue": {"rate": 0.001, "burst": 2}})
    assert len(_claim(env, "globex")) == 2  # a changed limit starts a new, full bucket
    env.t.update_tenant("globex", settings={})
    assert len(_claim(env, "globex")) == 1  # no limit: the rest

    assert _claim(env, "initech") == []
    assert env.counts("initech")["available"] == 6
    env.t.resume_tenant("initech")
    assert len(_claim(env, "initech")) == 6


# -- in-process workers -----------------------------------------------------------------------
@JOB_TABLE_CASES
async def test_max_running_holds_across_two_workers(
    make_env: EnvFactory, backend: str, mode: str
) -> None:
    timeline = Timeline()
    env = make_env(backend, mode, timeline_registry(timeline), ("acme", "globex"))
    env.t.update_tenant("acme", settings={"queue": {"max_running": 2}})
    for tenant_id in env.tenants:
        env.enqueue_many(tenant_id, "work", [{"sleep": 0.05}] * 24)
    workers = [env.worker(concurrency=4), env.worker(concurrency=4)]
    async with running(*workers):
        await wait_until(lambda: env.counts("acme")["completed"] == 24, 60, what="acme's jobs")
        await wait_until(lambda: env.counts("globex")["completed"] == 24, 30, what="globex's")
    assert timeline.peak["acme"] == 2, timeline.peak
    assert timeline.peak["globex"] > 2, timeline.peak  # the same bound, not enforced, breaks
    assert timeline.calls().most_common(1)[0][1] == 1  # nothing ran twice


@SHARED_BACKENDS
def test_a_rate_limited_start_is_stamped_when_its_token_was_drawn(
    make_tenantry: TenantryFactory, backend: str, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``attempted_at`` is the instant the bucket was read (its ``refilled_at``),
    however long the claim's queries took after it. A fake clock that moves on
    a second at every reading makes that gap show on SQLite; PostgreSQL's
    ``now()`` is one instant per statement anyway."""
    env = build_env(make_tenantry, backend, mode, noop_registry(), ("acme",))
    env.t.update_tenant("acme", settings={"queue": {"rate": 0.001, "burst": 2}})
    env.enqueue_many("acme", "record", [{"n": 1}, {"n": 2}])
    start, ticks = utcnow(), itertools.count()
    monkeypatch.setattr(sqlite_driver, "utcnow", lambda: start + timedelta(seconds=next(ticks)))
    claimed = _claim(env, "acme")
    assert len(claimed) == 2
    row = control_row(env, "acme")
    assert row is not None
    refilled = as_utc(row["refilled_at"])
    assert refilled is not None
    assert {as_utc(env.job("acme", i).attempted_at) for i in claimed} == {refilled}


@SHARED_BACKENDS
async def test_rate_limit_spaces_the_starts(make_env: EnvFactory, backend: str, mode: str) -> None:
    """Starts are claims (the bucket is drawn when a job is claimed): their
    ``attempted_at``, stamped with the instant the bucket was read (on
    PostgreSQL the statement's ``now()``, on SQLite the claim's one clock
    reading). The slack only absorbs microsecond rounding: a start stamped
    when its claim's queries were done, not when its token was drawn, would
    fail this under load."""
    timeline = Timeline()
    env = make_env(backend, mode, timeline_registry(timeline), ("acme", "globex"))
    rate, burst, slack = 4.0, 1, 0.001
    env.t.update_tenant("acme", settings={"queue": {"rate": rate, "burst": burst}})
    for tenant_id in env.tenants:
        env.enqueue_many(tenant_id, "work", [{"n": i} for i in range(10)])
    begun = time.monotonic()
    async with running(env.worker(concurrency=8)):
        await wait_until(lambda: env.counts("acme")["completed"] == 10, 30, what="acme's jobs")
    elapsed = time.monotonic() - begun
    claimed = [t.timestamp() for t in attempted_times(env, "acme")]
    assert len(claimed) == 10
    assert rate_violations(claimed, rate, burst, slack=slack) == []
    assert rate_violations(claimed, rate, burst + 1, slack=0.0) == []
    assert elapsed >= (10 - burst) / rate - 0.1
    # The unlimited tenant breaks the same bound (so the check can fail).
    free = [t.timestamp() for t in attempted_times(env, "globex")]
    assert rate_violations(free, rate, burst, slack=slack) != []


def _overlap_after(timeline: Timeline, tenant_id: str, since: float) -> int:
    now = time.monotonic()
    spans = [
        (s.start, s.end if s.end is not None else now)
        for s in timeline.snapshot()
        if s.tenant_id == tenant_id and s.start >= since
    ]
    return max_overlap(spans)


@SHARED_BACKENDS
async def test_limits_changed_at_runtime_take_effect(
    make_env: EnvFactory, backend: str, mode: str
) -> None:
    timeline = Timeline()
    env = make_env(backend, mode, timeline_registry(timeline), ("acme", "globex"))
    env.t.update_tenant("acme", settings={"queue": {"max_running": 1}})
    env.enqueue_many("acme", "work", [{"sleep": 0.05}] * 80)
    worker = env.worker(concurrency=6, refresh_interval=0.2)
    async with running(worker):
        await wait_until(lambda: timeline.started("acme") >= 4, 20, what="acme under way")
        assert timeline.peak["acme"] == 1
        changed = time.monotonic()
        await asyncio.to_thread(env.t.update_tenant, "acme", settings={"queue": {"max_running": 3}})
        await wait_until(
            lambda: _overlap_after(timeline, "acme", changed) >= 3, 20, what="3 at once"
        )
        assert timeline.peak["acme"] == 3
        # Down to a rate: 4 starts a second, one at a time.
        changed = time.monotonic()
        await asyncio.to_thread(
            env.t.update_tenant, "acme", settings={"queue": {"rate": 4, "burst": 1}}
        )
        started = timeline.started("acme")
        await asyncio.sleep(1.5)
        # Up to 3 claimed before the change may still start, then burst + rate * 1.5.
        assert timeline.started("acme") - started <= 3 + 1 + 4 * 1.5
        # No limits: the rest runs at the worker's full width.
        changed = time.monotonic()
        await asyncio.to_thread(env.t.update_tenant, "acme", settings={})
        await wait_until(lambda: env.counts("acme")["completed"] == 80, 30, what="all of acme")
    assert _overlap_after(timeline, "acme", changed) > 3


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_a_limit_added_at_runtime_does_not_stall_the_tenant(
    make_env: EnvFactory, backend: str
) -> None:
    """No tenant of the store had a limit when the worker last read the catalog.

    Giving one a limit now must limit it at once, not leave its jobs unclaimed
    until the worker's next refresh (``refresh_interval``, 10 s by default).
    """
    timeline = Timeline()
    env = make_env(backend, "shared", timeline_registry(timeline), ("acme", "globex"))
    env.enqueue_many("acme", "work", [{"sleep": 0.05}] * 60)
    worker = env.worker(concurrency=4)  # default refresh_interval
    async with running(worker):
        await wait_until(lambda: timeline.started("acme") >= 4, 20, what="acme under way")
        await asyncio.to_thread(env.t.update_tenant, "acme", settings={"queue": {"max_running": 2}})
        started = timeline.started("acme")
        await wait_until(
            lambda: timeline.started("acme") >= started + 10, 4, what="acme's jobs to go on"
        )


# -- worker processes ----------------------------------------------------------------------------
def _spans(tenantry: Tenantry, tenant_id: str) -> list[tuple[float, float]]:
    """The [start, end] each ``span`` job recorded in its note (wall clock)."""
    with tenant_context(tenant_id), tenantry.session() as session:
        bodies = session.scalars(select(Note.body)).all()
    spans = []
    for body in bodies:
        _, start, end = body.split("|")
        spans.append((float(start), float(end)))
    return sorted(spans)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_limits_hold_across_worker_processes(
    make_tenantry: TenantryFactory, make_fleet: FleetFactory
) -> None:
    tenantry = make_tenantry("postgresql")
    plan: dict[str, tuple[dict[str, Any], int, float]] = {
        "capped": ({"max_running": 2}, 24, 0.2),
        "paced": ({"rate": 4, "burst": 1}, 16, 0.0),
        "free": ({}, 24, 0.2),
    }
    for tenant_id, (limits, _, _) in plan.items():
        tenantry.create_tenant(tenant_id, settings={"queue": limits} if limits else None)
    queue = Queue(tenantry, app_registry)
    queue.setup()
    fleet = make_fleet(tenantry.config.stores["default"].url)
    workers = [fleet.start(concurrency=4, lease=5.0) for _ in range(3)]
    for worker in workers:
        fleet.wait_ready(worker)
    rng = random.Random(7)
    order = [t for t, (_, n, _) in plan.items() for _ in range(n)]
    rng.shuffle(order)
    for serial, tenant_id in enumerate(order):  # one at a time, as traffic would come
        with tenant_context(tenant_id):
            queue.enqueue("span", SpanPayload(f"{tenant_id}:{serial}", plan[tenant_id][2]))
    total = len(order)

    def done() -> bool:
        return queue.admin.count_jobs()[JobState.COMPLETED.value] == total

    wait_blocking(done, timeout=90, what=f"{total} jobs", diagnostics=fleet.report)
    assert fleet.stop_all() == {w.name: 0 for w in workers}
    fleet.assert_no_internal_errors()

    capped = _spans(tenantry, "capped")
    free = _spans(tenantry, "free")
    assert len(capped) == 24
    assert len(free) == 24
    assert max_overlap(capped) <= 2, capped
    assert max_overlap(free) > 2  # three processes, twelve slots: the bound is real
    # Every process ran some of the capped tenant's jobs: the limit is global.
    ran_by = {j.worker_id for j in queue.admin.list_jobs(tenant_id="capped", limit=100)}
    assert len(ran_by) >= 2, ran_by

    env = Env(tenantry, queue, app_registry, tuple(plan))
    claimed = [t.timestamp() for t in attempted_times(env, "paced")]
    assert len(claimed) == 16
    assert rate_violations(claimed, 4.0, 1, slack=0.01) == []
    assert len(_spans(tenantry, "paced")) == 16
    free_claims = [t.timestamp() for t in attempted_times(env, "free")]
    assert rate_violations(free_claims, 4.0, 1, slack=0.01) != []
