"""PostgreSQL only: the claim's index and row-level security on the jobs table."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from tenantry import tenant_context
from tenantry.queue import Job
from tenantry.queue.drivers import ClaimRequest
from tenantry.queue.job import utcnow
from tenantry.queue.sources import JobSource
from tests.conftest import TenantryFactory
from tests.integration.queue.handlers import noop_registry
from tests.integration.queue.support import build_env

pytestmark = pytest.mark.postgres


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Every node of a JSON plan tree, depth first."""
    found = [plan]
    for child in plan.get("Plans", []):
        found.extend(_nodes(child))
    return found


def _claim_plan(
    source: JobSource,
    *,
    limit: int,
    fair: bool,
    tenants: list[str] | None = None,
    plan_cache_mode: str | None = None,
    analyze: bool = False,
) -> tuple[list[Job], list[dict[str, Any]]]:
    """Claim (rolled back) and return the jobs and the plan PostgreSQL used, per auto_explain.

    ``plan_cache_mode`` picks a custom plan (planned with the parameter values) or
    the generic plan a prepared statement falls back to after a few executions;
    ``None`` leaves the settings the claim sets itself. ``analyze`` adds the
    actual row counts.
    """
    with source.engine().connect() as conn:
        raw = conn.connection.driver_connection
        assert raw is not None
        notices: list[str] = []

        def on_notice(diag: Any) -> None:
            notices.append(str(diag.message_primary or ""))

        raw.add_notice_handler(on_notice)
        try:
            conn.exec_driver_sql("LOAD 'auto_explain'")
            conn.exec_driver_sql("SET LOCAL auto_explain.log_min_duration = 0")
            conn.exec_driver_sql("SET LOCAL auto_explain.log_level = 'notice'")
            conn.exec_driver_sql("SET LOCAL auto_explain.log_format = 'json'")
            if analyze:
                conn.exec_driver_sql("SET LOCAL auto_explain.log_analyze = on")
            if plan_cache_mode is not None:
                conn.exec_driver_sql(f"SET LOCAL plan_cache_mode = {plan_cache_mode}")
            jobs = source.driver.claim(
                conn,
                ClaimRequest(
                    worker_id="explain",
                    queues=["default"],
                    limit=limit,
                    lease_seconds=30,
                    tenants=tenants,
                    fair=fair,
                ),
            )
            conn.rollback()
        finally:
            raw.remove_notice_handler(on_notice)
            conn.invalidate()  # auto_explain stays loaded in that session: do not pool it
        plans = [n for n in notices if "tenantry_jobs" in n and "lease_token" in n]
        assert len(plans) == 1, notices
        report = json.loads(plans[0].split("plan:", 1)[1])
        return jobs, _nodes(report["Plan"])


@pytest.mark.parametrize("plan_cache_mode", ["force_custom_plan", "force_generic_plan"])
@pytest.mark.parametrize("tenants", [None, ["acme"]])
@pytest.mark.parametrize("fair", [True, False], ids=["fair", "fifo"])
def test_claim_reads_the_partial_index_not_the_table(
    make_tenantry: TenantryFactory, plan_cache_mode: str, tenants: list[str] | None, fair: bool
) -> None:
    env = build_env(make_tenantry, "postgresql", "shared", noop_registry(), ("acme",))
    for _ in range(4):
        env.enqueue_many("acme", "record", [{"n": i} for i in range(500)])
    env.finish_directly("acme", 2000)
    env.enqueue_many("acme", "record", [{"n": i} for i in range(5)])
    source = env.source("acme")
    with source.engine().connect() as conn:
        conn.exec_driver_sql("ANALYZE tenantry.tenantry_jobs")
        conn.commit()

    claimed, plan = _claim_plan(
        source, limit=3, fair=fair, tenants=tenants, plan_cache_mode=plan_cache_mode
    )
    assert len(claimed) == 3
    shape = [(n["Node Type"], n.get("Relation Name"), n.get("Index Name")) for n in plan]
    assert not [
        n for n in plan if n["Node Type"] == "Seq Scan" and n["Relation Name"] == "tenantry_jobs"
    ], shape
    if fair:
        # Runnable rows through the partial indexes (or (tenant_id, state) over
        # available rows), running counts through (tenant_id, state), the
        # UPDATE by primary key: never the finished history.
        for scan in plan:
            index = scan.get("Index Name")
            if index is None or not index.startswith(("ix_tenantry_jobs", "tenantry_jobs_")):
                continue
            assert index in {
                "tenantry_jobs_pkey",
                "ix_tenantry_jobs_fair",
                "ix_tenantry_jobs_claim",
                "ix_tenantry_jobs_tenant_state",
            }, shape
            if index == "ix_tenantry_jobs_tenant_state":
                cond = scan.get("Index Cond", "")
                assert "'running'" in cond or "'available'" in cond, scan
        assert env.counts("acme")["available"] == 5
        return
    scans = [n for n in plan if n.get("Relation Name") == "tenantry_jobs" and "Index Name" in n]
    # The candidates come from an index over available rows only; the UPDATE
    # then reaches the chosen rows by primary key.
    assert {n["Index Name"] for n in scans} - {"tenantry_jobs_pkey"}, shape
    for scan in scans:
        if scan["Index Name"] == "tenantry_jobs_pkey":
            continue
        if tenants is None:
            assert scan["Index Name"] == "ix_tenantry_jobs_claim", shape
        else:
            # A tenant-filtered claim may enter through (tenant_id, state), but
            # only ever over available rows: finished history is never read.
            assert scan["Index Name"] == "ix_tenantry_jobs_claim" or (
                "'available'" in scan.get("Index Cond", "")
            ), scan
    assert env.counts("acme")["available"] == 5  # the claim was rolled back


@pytest.mark.parametrize("plan_cache_mode", ["force_custom_plan", "force_generic_plan"])
def test_fair_claim_looks_up_the_busy_tenants_controls_not_every_tenants(
    make_tenantry: TenantryFactory, plan_cache_mode: str
) -> None:
    """With ten thousand tenants the control table was read whole and hashed at
    every claim (a third of the claim's time), to join a window of busy tenants."""
    env = build_env(make_tenantry, "postgresql", "shared", noop_registry(), ("acme", "globex"))
    env.enqueue_many("acme", "record", [{"n": i} for i in range(5)])
    env.enqueue_many("globex", "record", [{"n": i} for i in range(5)])
    source = env.source("acme")
    with source.engine().connect() as conn:
        conn.exec_driver_sql(
            "INSERT INTO tenantry.tenantry_queue_tenants (tenant_id, weight, paused, updated_at) "
            "SELECT 'idle' || g, 1, false, now() FROM generate_series(1, 10000) g"
        )
        conn.exec_driver_sql("ANALYZE tenantry.tenantry_queue_tenants")
        conn.exec_driver_sql("ANALYZE tenantry.tenantry_jobs")
        conn.commit()
    claimed, plan = _claim_plan(source, limit=4, fair=True, plan_cache_mode=plan_cache_mode)
    assert sorted(j.tenant_id for j in claimed) == ["acme", "acme", "globex", "globex"]
    controls = [
        (n["Node Type"], n.get("Index Name"))
        for n in plan
        if n.get("Relation Name") == "tenantry_queue_tenants"
    ]
    assert controls
    assert all(node != "Seq Scan" for node, _ in controls), controls


@pytest.mark.parametrize("fair", [True, False], ids=["fair", "fifo"])
def test_claim_reads_a_batch_not_the_backlog_without_statistics(
    make_tenantry: TenantryFactory, fair: bool
) -> None:
    """Right after a bulk enqueue the table has no statistics; the claim must not care.

    The planner then believes the runnable set is a handful of rows, and a plan
    that reads all of them and sorts (through the FIFO index) looks as cheap
    as the ordered index scan. The worker prepares its claims once per
    connection, so such a plan would stay for the connection's life: every
    claim would read the whole backlog. A regression test for a plan seen.
    """
    env = build_env(make_tenantry, "postgresql", "shared", noop_registry(), ("acme", "globex"))
    source = env.source("acme")
    with source.engine().connect() as conn:
        conn.exec_driver_sql("ALTER TABLE tenantry.tenantry_jobs SET (autovacuum_enabled = off)")
        conn.commit()
    env.enqueue_many("acme", "record", [{"n": i} for i in range(3000)])
    env.enqueue_many("globex", "record", [{"n": i} for i in range(5)])
    claimed, plan = _claim_plan(source, limit=10, fair=fair, analyze=True)
    assert len(claimed) == 10
    # Rows each scan of the jobs table produced or filtered out, over all its loops.
    read = [
        (
            n["Node Type"],
            n.get("Index Name"),
            (n["Actual Rows"] + n.get("Rows Removed by Filter", 0)) * n["Actual Loops"],
        )
        for n in plan
        if n.get("Relation Name") == "tenantry_jobs"
    ]
    assert read
    assert max(rows for *_, rows in read) <= 50, read


@pytest.mark.parametrize("mode", ["shared", "schema"])
def test_tenant_sessions_see_and_touch_only_their_own_jobs(
    make_tenantry: TenantryFactory, mode: str
) -> None:
    env = build_env(make_tenantry, "postgresql", mode, noop_registry())
    env.enqueue_many("acme", "record", [{"n": i} for i in range(3)])
    env.enqueue_many("globex", "record", [{"n": i} for i in range(2)])

    count = text("SELECT count(*) FROM tenantry.tenantry_jobs")
    for tid, expected in (("acme", 3), ("globex", 2)):
        with tenant_context(tid), env.t.session() as s:
            assert s.execute(count).scalar() == expected
            tenants = s.execute(text("SELECT DISTINCT tenant_id FROM tenantry.tenantry_jobs"))
            assert set(tenants.scalars()) == {tid}
            touched = s.execute(text("UPDATE tenantry.tenantry_jobs SET priority = 7 RETURNING id"))
            assert len(touched.all()) == expected
            gone = s.execute(
                text("DELETE FROM tenantry.tenantry_jobs WHERE priority = 7 RETURNING id")
            )
            assert len(gone.all()) == expected
            s.rollback()

    spoof = text(
        "INSERT INTO tenantry.tenantry_jobs"
        " (tenant_id, kind, payload, state, max_attempts, scheduled_at, errors, created_at)"
        " VALUES ('globex', 'record', '{}', 'available', 1, now(), '[]', now())"
    )
    with tenant_context("acme"), env.t.session() as s:
        with pytest.raises(DBAPIError) as caught:
            s.execute(spoof)
        assert "row-level security" in str(caught.value)
        s.rollback()

    # The worker's (owner) connection sees every tenant's jobs.
    with env.source("acme").engine().connect() as conn:
        assert conn.execute(count).scalar() == 5
    assert env.total("acme") == 3
    assert env.total("globex") == 2


def test_idempotent_enqueue_works_under_a_generic_plan(make_tenantry: TenantryFactory) -> None:
    """psycopg prepares a statement after five runs on one connection; the keyed
    INSERT's ON CONFLICT must still find the partial unique index then (with the
    index predicate as bound parameters, a generic plan could not: seen in CI)."""
    env = build_env(make_tenantry, "postgresql", "shared", noop_registry(), ("acme",))
    rows: list[dict[str, Any]] = [
        {
            "tenant_id": "acme",
            "queue": "default",
            "kind": "record",
            "payload": {"n": i},
            "priority": 0,
            "state": "available",
            "attempt": 0,
            "max_attempts": 3,
            "scheduled_at": utcnow(),
            "errors": [],
            "idempotency_key": f"key-{i % 4}",
            "correlation_id": None,
            "created_at": utcnow(),
        }
        for i in range(8)
    ]
    source = env.source("acme")
    with source.engine().begin() as conn:
        conn.exec_driver_sql("SET LOCAL plan_cache_mode = force_generic_plan")
        inserted = source.driver.write_jobs(conn, rows)
    assert [i.created for i in inserted] == [True] * 4 + [False] * 4
    assert [i.id for i in inserted[4:]] == [i.id for i in inserted[:4]]
