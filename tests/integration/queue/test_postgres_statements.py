"""Every statement text of the PostgreSQL driver, each variant, planned by a real server."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from tenantry.queue.drivers.postgres import queries as q
from tenantry.queue.drivers.postgres.fast_insert import one_row_params
from tenantry.queue.drivers.postgres.rows import JOB_COLUMNS, WRITTEN
from tenantry.queue.job import Job, utcnow
from tenantry.queue.schema import jobs_table
from tests.conftest import TenantryFactory
from tests.integration.queue.handlers import noop_registry
from tests.integration.queue.support import build_env

pytestmark = pytest.mark.postgres

#: COPY cannot be explained; the bulk-enqueue tests run it.
NOT_EXPLAINABLE = {"COPY_JOBS"}


def _row() -> dict[str, Any]:
    now = utcnow()
    return {
        "tenant_id": "acme",
        "queue": "default",
        "kind": "record",
        "payload": {"n": 1},
        "priority": 0,
        "state": "available",
        "attempt": 0,
        "max_attempts": 3,
        "scheduled_at": now,
        "errors": [],
        "idempotency_key": None,
        "correlation_id": None,
        "created_at": now,
    }


def _params(name: str) -> Any:
    """Parameters of the right types for statement *name* (a superset of its names)."""
    if name == "INSERT_ONE_NOTIFY":
        return one_row_params([_row()])
    if name.startswith("BULK_INSERT"):
        row = _row()
        arrays: dict[str, Any] = {
            column: [json.dumps(row[column]) if kind == "jsonb" else row[column]]
            for column, kind in WRITTEN
        }
        return {**arrays, "channel": q.CHANNEL, "wake": ["default"]}
    return dict(
        queue="default",
        queues=["default", "mail"],
        tenants=["acme"],
        held_tenants=["acme"],
        held_counts=[1.0],
        after="",
        window=64,
        locked=[],
        limit=10,
        lease=30.0,
        token="token",
        worker="explain",
        ids=[1, 2],
        channel=q.CHANNEL,
        n=3,
    )


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    found = [plan]
    for child in plan.get("Plans", []):
        found.extend(_nodes(child))
    return found


def test_every_statement_is_named_and_each_variant_differs() -> None:
    assert len(q.CLAIM_FIFO) == len(q.LOCK_LIMITED) == len(q.CLAIM_FAIR) == 4
    for variants in (q.CLAIM_FIFO, q.LOCK_LIMITED, q.CLAIM_FAIR):
        assert len(set(variants)) == 4
        for text in variants:
            assert "{" not in text  # every placeholder filled
            assert "}" not in text
    assert q.variant(["default"], None) != q.variant(["default", "mail"], None)
    assert q.variant(["default"], ["acme"]) != q.variant(["default"], None)
    assert set(q.STATEMENTS) >= {"COMPLETE", "EXTEND", "RELEASE", "COPY_JOBS", "NEXT_IDS"}


def test_the_column_list_is_the_tables_and_the_jobs() -> None:
    names = [c.name for c in JOB_COLUMNS]
    assert sorted(names) == sorted(jobs_table.c.keys())
    assert names == [f.name for f in dataclasses.fields(Job)]


def test_every_statement_variant_plans_on_a_real_server(make_tenantry: TenantryFactory) -> None:
    """As the claim sessions plan them, over a table of mostly finished jobs."""
    env = build_env(make_tenantry, "postgresql", "shared", noop_registry(), ("acme",))
    for _ in range(4):
        env.enqueue_many("acme", "record", [{"n": i} for i in range(500)])
    env.finish_directly("acme", 1990)
    source = env.source("acme")
    with source.engine().connect() as conn:
        conn.exec_driver_sql("ANALYZE tenantry.tenantry_jobs")
        conn.commit()
    explained: list[str] = []
    with source.engine().connect() as conn:
        raw = conn.connection.driver_connection
        assert raw is not None
        conn.exec_driver_sql(q.CLAIM_SET_LOCAL)
        for name, statement in q.STATEMENTS.items():
            if name in NOT_EXPLAINABLE:
                continue
            with raw.cursor() as cur:
                cur.execute(f"EXPLAIN (FORMAT JSON) {statement}", _params(name))
                found = cur.fetchone()
            assert found is not None
            (plan,) = found
            nodes = _nodes(plan[0]["Plan"])
            assert nodes, name
            if name.startswith(("CLAIM_", "LOCK_")):
                # The jobs table is read through indexes, never scanned whole.
                scans = [
                    n
                    for n in nodes
                    if n["Node Type"] == "Seq Scan" and n.get("Relation Name") == "tenantry_jobs"
                ]
                assert scans == [], (name, scans)
            explained.append(name)
        conn.rollback()
    assert set(explained) == set(q.STATEMENTS) - NOT_EXPLAINABLE
