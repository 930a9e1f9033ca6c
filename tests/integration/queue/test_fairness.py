"""Fair claiming across tenants, on real SQLite and PostgreSQL.

* A claim batch is split exactly as ``fairness.shares`` predicts from what is in
  the table (weights, running jobs, limits, paused tenants), on both backends.
* A noisy tenant's backlog does not hold back other tenants' jobs; with
  ``fair=False`` it does (so the check can fail).
* Over many claims, busy tenants' starts follow their weights.
* Priority still orders the jobs within one tenant.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import delete, select

from tenantry.queue import Job, JobState
from tenantry.queue.drivers import ClaimRequest
from tenantry.queue.fairness import (
    FAIR_WINDOW,
    Contender,
    next_after,
    rate_allowance,
    rate_tokens,
    shares,
)
from tenantry.queue.job import as_utc, utcnow
from tenantry.queue.schema import control_table as C
from tenantry.queue.schema import jobs_table as J
from tests.conftest import TenantryFactory
from tests.integration.queue.handlers import noop_registry
from tests.integration.queue.support import Env, EnvFactory, build_env, running, wait_until
from tests.integration.queue.tenant_support import (
    JOB_TABLE_CASES,
    Timeline,
    delete_control,
    insert_control,
    tenant_state,
    timeline_registry,
)

SHARED_TABLE = pytest.mark.parametrize(
    ("backend", "mode"),
    [("sqlite", "shared"), ("postgresql", "shared"), ("postgresql", "schema")],
)


# -- the claim itself ---------------------------------------------------------------------
#: tenant -> (queue settings, jobs to enqueue, jobs already running before the test claims)
PLAN: dict[str, tuple[dict[str, Any] | None, int, int]] = {
    "ta": ({"weight": 1}, 30, 0),
    "tb": ({"weight": 2}, 30, 0),
    "tc": ({"weight": 3}, 30, 2),
    "td": ({"weight": 1, "max_running": 3}, 30, 2),
    "te": (None, 30, 0),  # suspended
    "tf": ({"weight": 4}, 2, 0),  # few jobs: its share is capped by what it has
    "tg": ({"rate": 0.001, "burst": 2}, 30, 0),  # two starts for the whole test
    "th": ({"weight": 5}, 30, 0),  # its control row goes missing: defaults apply
    "ti": ({"weight": 2, "max_running": 1}, 30, 1),  # at its limit from the start
}
LIMITS = [7, 5, 12, 3, 9, 1, 20, 16, 20, 30, 40, 64, 64, 64, 64, 64]


def _predict(
    env: Env, tenants: Sequence[str], limit: int, held: Mapping[str, int]
) -> tuple[dict[str, int], dict[str, list[int]]]:
    """The batch fairness.shares predicts from the table, and each tenant's next job ids.

    The fair order counts the jobs the claiming worker holds (*held*); the
    concurrency limit counts every running job in the table, whoever holds it.
    A tenant's head is when its next job (by priority) became due.
    """
    source = env.source("ta")
    with source.engine(write=False).connect() as conn:
        rows = conn.execute(
            select(J.c.tenant_id, J.c.state, J.c.id, J.c.priority, J.c.scheduled_at).where(
                J.c.state.in_([JobState.AVAILABLE.value, JobState.RUNNING.value])
            )
        ).all()
        controls = {r["tenant_id"]: r for r in conn.execute(select(C)).mappings()}
    now = utcnow()
    contenders = []
    next_ids: dict[str, list[int]] = {}
    for tenant_id in tenants:
        available = sorted(
            (-r.priority, as_utc(r.scheduled_at), r.id)
            for r in rows
            if r.tenant_id == tenant_id and r.state == JobState.AVAILABLE.value
        )
        running_now = sum(
            1 for r in rows if r.tenant_id == tenant_id and r.state == JobState.RUNNING.value
        )
        next_ids[tenant_id] = [i for _, _, i in available]
        if not available:
            continue
        ctl = controls.get(tenant_id)
        allowance = min(limit, len(available))
        weight = 1
        if ctl is not None:
            if ctl["paused"]:
                continue
            weight = int(ctl["weight"])
            if ctl["max_running"] is not None:
                allowance = min(allowance, ctl["max_running"] - running_now)
            if ctl["rate"] is not None:
                level = rate_tokens(
                    ctl["tokens"], as_utc(ctl["refilled_at"]), now, ctl["rate"], ctl["burst"]
                )
                allowance = min(allowance, rate_allowance(level))
        head = available[0][1]
        assert head is not None
        contenders.append(Contender(tenant_id, weight, held.get(tenant_id, 0), allowance, head))
    return shares(contenders, limit), next_ids


def _check_batch(
    jobs: Sequence[Job], expected: dict[str, int], next_ids: dict[str, list[int]]
) -> None:
    got = Counter(j.tenant_id for j in jobs)
    assert dict(got) == expected
    # Each tenant's share is its next jobs in order, and the batch is
    # round-robin: the first len(got) jobs belong to different tenants.
    for tenant_id, n in got.items():
        mine = [j.id for j in jobs if j.tenant_id == tenant_id]
        assert mine == next_ids[tenant_id][:n], tenant_id
    assert len({j.tenant_id for j in jobs[: len(got)]}) == len(got)


@SHARED_TABLE
def test_each_claim_batch_is_split_as_the_fair_shares_predict(
    make_tenantry: TenantryFactory, backend: str, mode: str
) -> None:
    env = build_env(make_tenantry, backend, mode, noop_registry(), tuple(PLAN))
    # Enqueued in reverse order: the oldest head (the tie-break) is not the first id.
    for tenant_id in reversed(PLAN):
        queue_settings, count, _ = PLAN[tenant_id]
        if queue_settings is not None:
            env.t.update_tenant(tenant_id, settings={"queue": queue_settings})
        env.enqueue_many(tenant_id, "record", [{"n": i} for i in range(count)])
    env.t.suspend_tenant("te")
    delete_control(env, "th")
    source = env.source("ta")
    driver = source.driver
    # Another worker runs some jobs already: they count against max_running,
    # not in this worker's fair order.
    with source.engine().begin() as conn:
        for tenant_id, (_, _, already) in PLAN.items():
            if already:
                pre = driver.claim(
                    conn,
                    ClaimRequest(
                        worker_id="other",
                        queues=["default"],
                        limit=already,
                        lease_seconds=30,
                        tenants=[tenant_id],
                        fair=False,
                    ),
                )
                assert len(pre) == already

    held: Counter[str] = Counter()  # what this worker ("w") holds
    claimed: Counter[str] = Counter()
    rounds_with_several_tenants = 0
    for round_no, limit in enumerate(LIMITS):
        expected, next_ids = _predict(env, list(PLAN), limit, held)
        with source.engine().begin() as conn:
            jobs = driver.claim(
                conn,
                ClaimRequest(
                    worker_id="w",
                    queues=["default"],
                    limit=limit,
                    lease_seconds=30,
                    fair=True,
                    held=dict(held),
                ),
            )
        try:
            _check_batch(jobs, expected, next_ids)
        except AssertionError as exc:
            raise AssertionError(f"round {round_no} (limit {limit}, held {dict(held)})") from exc
        got = Counter(j.tenant_id for j in jobs)
        if len(got) > 1:
            rounds_with_several_tenants += 1
        claimed.update(got)
        held.update(got)
        # Finish every other claimed job, so what the worker holds varies.
        finished = sorted(jobs, key=lambda j: j.id)[::2]
        with source.engine().begin() as conn:
            driver.complete(conn, [(j.id, j.lease_token or "") for j in finished])
        held.subtract(Counter(j.tenant_id for j in finished))
        assert tenant_state(env, "td").running <= 3
        assert tenant_state(env, "ti").running <= 1
    assert rounds_with_several_tenants >= 8
    assert claimed["te"] == 0
    assert claimed["tg"] == 2
    assert claimed["tf"] == 2
    assert claimed["th"] > 0
    assert env.counts("te")["available"] == 30
    assert tenant_state(env, "ti").running == 1  # the other worker's: never a second one


@SHARED_TABLE
def test_priority_orders_jobs_within_a_tenant_under_fair_claims(
    make_tenantry: TenantryFactory, backend: str, mode: str
) -> None:
    env = build_env(make_tenantry, backend, mode, noop_registry(), ("acme", "globex"))
    priorities = [0, 5, -1, 5, 3, 0, 9, -4, 3, 1]
    made = {
        p_index: env.enqueue("acme", "record", {"n": p_index}, priority=p)
        for p_index, p in enumerate(priorities)
    }
    env.enqueue_many("globex", "record", [{"n": i} for i in range(10)], priority=100)
    source = env.source("acme")
    order: list[int] = []
    for _ in range(10):
        with source.engine().begin() as conn:
            jobs = source.driver.claim(
                conn,
                ClaimRequest(
                    worker_id="w", queues=["default"], limit=4, lease_seconds=30, fair=True
                ),
            )
            # Nothing keeps running: each batch is split anew, 2 and 2.
            source.driver.complete(conn, [(j.id, j.lease_token or "") for j in jobs])
        mine = [j for j in jobs if j.tenant_id == "acme"]
        if jobs and len({j.tenant_id for j in jobs}) == 2:
            assert len(mine) == 2
        order.extend(j.id for j in mine)
    by_id = {e.id: p for p, e in made.items()}
    expected = sorted(by_id, key=lambda i: (-priorities[by_id[i]], i))
    assert order == expected


# -- a worker -------------------------------------------------------------------------------
NOISY_JOBS = 1500


async def _noisy_neighbour(env: Env, timeline: Timeline, *, fair: bool) -> tuple[int, int]:
    """A has a big backlog; B and C enqueue a little once A is under way.

    Returns (A's starts before B's and C's last start, A's starts when their
    jobs were committed).
    """
    env.enqueue_many("acme", "work", [{"sleep": 0.01}] * NOISY_JOBS)
    worker = env.worker(concurrency=8, fair=fair, refresh_interval=0.2)
    async with running(worker):
        await wait_until(lambda: timeline.started("acme") >= 100, 30, what="A under way")
        await asyncio.to_thread(env.enqueue_many, "globex", "work", [{"sleep": 0.002}] * 3)
        await asyncio.to_thread(env.enqueue_many, "initech", "work", [{"sleep": 0.002}] * 3)
        # (On SQLite the enqueues wait for the one write lock, which the busy
        # worker takes for every claim: count from their commit.)
        a_at_commit = timeline.started("acme")
        assert a_at_commit < NOISY_JOBS // 2, "A was nearly done before B and C enqueued"
        await wait_until(
            lambda: timeline.started("globex") == 3 and timeline.started("initech") == 3,
            60,
            what="B's and C's jobs to start",
        )
    order = timeline.order()
    last_other = max(i for i, t in enumerate(order) if t != "acme")
    return order[:last_other].count("acme"), a_at_commit


@JOB_TABLE_CASES
async def test_a_noisy_tenants_backlog_does_not_hold_back_others(
    make_env: EnvFactory, backend: str, mode: str
) -> None:
    timeline = Timeline()
    env = make_env(backend, mode, timeline_registry(timeline), ("acme", "globex", "initech"))
    a_started, a_at_commit = await _noisy_neighbour(env, timeline, fair=True)
    # Same jobs table: B and C start within a batch or two (capacity 16 here).
    # A new tenant database is found by polling, up to idle_poll_max later.
    bound = 64 if mode != "database" else NOISY_JOBS // 4
    assert a_started - a_at_commit <= bound, (a_started, a_at_commit)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_without_fair_claims_the_backlog_goes_first(
    make_env: EnvFactory, backend: str
) -> None:
    """The contrast: strict FIFO makes B and C wait for all of A's backlog."""
    timeline = Timeline()
    env = make_env(backend, "shared", timeline_registry(timeline), ("acme", "globex", "initech"))
    a_started, _ = await _noisy_neighbour(env, timeline, fair=False)
    assert a_started >= NOISY_JOBS - 32


WEIGHTS = {"light": 1, "middle": 2, "heavy": 3}
WEIGHT_BACKLOG = 400
FIRST_STARTS = 600
TOLERANCE = 0.07


async def _weighted_starts(env: Env, timeline: Timeline, *, fair: bool) -> dict[str, float]:
    for tenant_id, weight in WEIGHTS.items():
        await asyncio.to_thread(
            env.t.update_tenant, tenant_id, settings={"queue": {"weight": weight}}
        )
        await asyncio.to_thread(
            env.enqueue_many, tenant_id, "work", [{"sleep": 0.005}] * WEIGHT_BACKLOG
        )
    worker = env.worker(concurrency=6, fair=fair)
    async with running(worker):
        await wait_until(lambda: timeline.started() >= FIRST_STARTS, 60, what="enough starts")
    first = Counter(timeline.order()[:FIRST_STARTS])
    counters = worker.tenant_stats
    assert sum(counters[t].started for t in WEIGHTS if t in counters) >= FIRST_STARTS
    return {t: first[t] / FIRST_STARTS for t in WEIGHTS}


def _weight_errors(got: dict[str, float]) -> dict[str, float]:
    total = sum(WEIGHTS.values())
    return {t: round(got[t] - WEIGHTS[t] / total, 3) for t in WEIGHTS}


@SHARED_TABLE
async def test_busy_tenants_start_jobs_in_proportion_to_their_weights(
    make_env: EnvFactory, backend: str, mode: str
) -> None:
    timeline = Timeline()
    env = make_env(backend, mode, timeline_registry(timeline), tuple(WEIGHTS))
    got = await _weighted_starts(env, timeline, fair=True)
    errors = _weight_errors(got)
    assert all(abs(e) <= TOLERANCE for e in errors.values()), (got, errors)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_without_fair_claims_weights_mean_nothing(make_env: EnvFactory, backend: str) -> None:
    timeline = Timeline()
    env = make_env(backend, "shared", timeline_registry(timeline), tuple(WEIGHTS))
    got = await _weighted_starts(env, timeline, fair=False)
    errors = _weight_errors(got)
    assert any(abs(e) > TOLERANCE for e in errors.values()), (got, errors)


async def test_weights_hold_between_database_per_tenant_tenants(make_env: EnvFactory) -> None:
    timeline = Timeline()
    env = make_env("sqlite", "database", timeline_registry(timeline), tuple(WEIGHTS))
    got = await _weighted_starts(env, timeline, fair=True)
    errors = _weight_errors(got)
    assert all(abs(e) <= TOLERANCE for e in errors.values()), (got, errors)


async def test_worker_starts_follow_priority_within_a_tenant(make_env: EnvFactory) -> None:
    timeline = Timeline()
    env = make_env("sqlite", "shared", timeline_registry(timeline), ("acme", "globex"))
    priorities = [0, 2, -3, 7, 2, 1, 7, -1]
    made = [env.enqueue("acme", "work", {"n": i}, priority=p) for i, p in enumerate(priorities)]
    env.enqueue_many("globex", "work", [{"n": i} for i in range(8)], priority=50)
    worker = env.worker(concurrency=1, prefetch=0)
    async with running(worker):
        await wait_until(lambda: timeline.started() == 16, 20, what="all jobs")
    expected = [
        e.id for e, _ in sorted(zip(made, priorities, strict=True), key=lambda x: (-x[1], x[0].id))
    ]
    assert timeline.job_ids("acme") == expected
    globex = env.queue.admin.list_jobs(tenant_id="globex", limit=100)
    assert timeline.job_ids("globex") == sorted(j.id for j in globex)


@pytest.mark.parametrize("kind", ["work", "work_tx"])
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_a_one_slot_worker_does_not_keep_a_tenant_behind_a_backlog(
    make_env: EnvFactory, backend: str, kind: str
) -> None:
    """concurrency=1, prefetch=0 (the set-up the docs advise for long jobs).

    "A tenant with a single job never waits behind another tenant's backlog"
    (fairness.py) must hold for the smallest worker too.
    """
    timeline = Timeline()
    env = make_env(backend, "shared", timeline_registry(timeline), ("acme", "globex"))
    env.enqueue_many("acme", kind, [{"sleep": 0.002}] * 150)
    worker = env.worker(concurrency=1, prefetch=0)
    async with running(worker):
        await wait_until(lambda: timeline.started("acme") >= 10, 20, what="A under way")
        await asyncio.to_thread(env.enqueue, "globex", kind, {"n": 1})
        at_enqueue = timeline.started("acme")
        await wait_until(lambda: timeline.started("globex") == 1, 60, what="B's job to start")
    order = timeline.order()
    a_before_b = order[: order.index("globex")].count("acme")
    assert a_before_b - at_enqueue <= 3, (a_before_b, at_enqueue)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_claims_agree_with_the_fair_shares_for_many_tenants(
    make_tenantry: TenantryFactory, backend: str
) -> None:
    """Random weights, held counts, limits, priorities and due times (with ties),
    more tenants than places: every batch is the one ``shares`` predicts."""
    rng = random.Random(20261128)
    env = build_env(make_tenantry, backend, "shared", noop_registry(), ("ta",))
    source = env.source("ta")
    driver = source.driver
    tenants = [f"t{i:02d}" for i in range(30)]
    base = utcnow() - timedelta(minutes=5)
    rows = []
    for tenant_id in tenants:
        for _ in range(rng.randrange(0, 12)):
            # Whole seconds: many tenants share a due time, so ties reach the tenant id.
            due = base + timedelta(seconds=rng.randrange(0, 6))
            rows.append(
                {
                    "tenant_id": tenant_id,
                    "queue": "default",
                    "kind": "record",
                    "payload": {"n": 0, "key": "", "sleep": 0.0},
                    "priority": rng.choice([-1, 0, 0, 1]),
                    "state": JobState.AVAILABLE.value,
                    "attempt": 0,
                    "max_attempts": 3,
                    "scheduled_at": due,
                    "errors": [],
                    "idempotency_key": None,
                    "correlation_id": None,
                    "created_at": base,
                }
            )
    rng.shuffle(rows)
    with source.engine().begin() as conn:
        driver.write_jobs(conn, rows)
    for tenant_id in tenants:
        roll = rng.random()
        values: dict[str, Any] = {"weight": rng.randrange(1, 6), "paused": roll < 0.15}
        if 0.15 <= roll < 0.35:
            values["max_running"] = rng.randrange(1, 4)
        if roll < 0.85:  # the rest have no control row: defaults
            insert_control(source, tenant_id, **values)
    with source.engine().begin() as conn:  # another worker runs some already
        driver.claim(
            conn,
            ClaimRequest(
                worker_id="other", queues=["default"], limit=15, lease_seconds=30, fair=False
            ),
        )
    claimed = 0
    for round_no in range(25):
        limit = rng.choice([1, 2, 3, 5, 8, 13, 21])
        held = {t: rng.randrange(0, 4) for t in rng.sample(tenants, 10)}
        expected, next_ids = _predict(env, tenants, limit, held)
        with source.engine().begin() as conn:
            jobs = driver.claim(
                conn,
                ClaimRequest(
                    worker_id="w",
                    queues=["default"],
                    limit=limit,
                    lease_seconds=30,
                    fair=True,
                    held=held,
                ),
            )
        try:
            _check_batch(jobs, expected, next_ids)
        except AssertionError as exc:
            raise AssertionError(f"round {round_no} (limit {limit}, held {held})") from exc
        claimed += len(jobs)
        # Some running jobs (this worker's or the other's) finish.
        running_now = env.queue.admin.list_jobs(state=JobState.RUNNING, limit=1000)
        done = [j for j in running_now if rng.random() < 0.5]
        with source.engine().begin() as conn:
            driver.complete(conn, [(j.id, j.lease_token or "") for j in done])
    assert claimed > 100


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_control_row_written_without_paused_does_not_pause_its_tenant(
    make_tenantry: TenantryFactory, backend: str
) -> None:
    """The schema's default for ``paused`` is false, on every backend."""
    env = build_env(make_tenantry, backend, "shared", noop_registry(), ("ta",))
    source = env.source("ta")
    env.enqueue_many("ta", "record", [{"n": i} for i in range(3)])
    with source.engine().begin() as conn:
        conn.execute(delete(C).where(C.c.tenant_id == "ta"))
        conn.execute(C.insert().values(tenant_id="ta", weight=2, updated_at=utcnow()))
    with source.engine().begin() as conn:
        jobs = source.driver.claim(
            conn,
            ClaimRequest(worker_id="w", queues=["default"], limit=10, lease_seconds=30, fair=True),
        )
    assert len(jobs) == 3


@pytest.mark.postgres
def test_more_busy_tenants_than_the_window_all_get_their_turn(
    make_tenantry: TenantryFactory,
) -> None:
    """With more busy tenants than FAIR_WINDOW, claims move through the windows.

    Each claim looks at one window, so its cost stays bounded; ``next_after``
    moves the window on, so every tenant is served in turn: the first 1,000
    jobs claimed belong to 1,000 different tenants. Then a run of paused
    tenants longer than the window does not stop the cycle: every other
    tenant's jobs are still all claimed, and none of the paused ones.
    """
    env = build_env(make_tenantry, "postgresql", "shared", noop_registry(), ("ta",))
    source = env.source("ta")
    driver = source.driver
    tenants = sorted(f"w{i:04d}" for i in range(1000))
    base = utcnow() - timedelta(minutes=5)
    rows: list[dict[str, Any]] = [
        {
            "tenant_id": tenant_id,
            "queue": "default",
            "kind": "record",
            "payload": {"n": n, "key": "", "sleep": 0.0},
            "priority": 0,
            "state": JobState.AVAILABLE.value,
            "attempt": 0,
            "max_attempts": 3,
            "scheduled_at": base + timedelta(milliseconds=i),
            "errors": [],
            "idempotency_key": None,
            "correlation_id": None,
            "created_at": base,
        }
        for i, tenant_id in enumerate(tenants)
        for n in range(3)
    ]
    with source.engine().begin() as conn:
        driver.write_jobs(conn, rows)
    served: list[str] = []
    after = ""

    def claim_rounds(n: int) -> None:
        nonlocal after
        for _ in range(n):
            with source.engine().begin() as conn:
                jobs = driver.claim(
                    conn,
                    ClaimRequest(
                        worker_id="w",
                        queues=["default"],
                        limit=20,
                        lease_seconds=30,
                        fair=True,
                        held=Counter(served),  # what a worker's load would remember
                        after=after,
                    ),
                )
            served.extend(j.tenant_id for j in jobs)
            after = next_after(after, [j.tenant_id for j in jobs], tenants, FAIR_WINDOW)

    claim_rounds(50)
    assert len(served) == 1000
    assert len(set(served)) == 1000, Counter(served).most_common(3)

    paused = tenants[100:400]  # longer than the window, and the cursor is before it
    for tenant_id in paused:
        insert_control(source, tenant_id, weight=1, paused=True)
    after = tenants[50]
    served.clear()
    claim_rounds(120)
    assert not set(served) & set(paused)
    assert Counter(served) == {t: 2 for t in tenants if t not in paused}
