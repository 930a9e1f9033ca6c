"""PostgreSQL: a claim with nothing to acknowledge runs as one autocommitted statement.

The worker's idle path (a NOTIFY, then one claim) saves the ``BEGIN`` and
``COMMIT`` round trips this way. These tests pin what that must not change:
the claim is committed when the block ends, a block that carries more than
the claim is still one transaction, and the pool never keeps a dead or
autocommitting connection.
"""

from __future__ import annotations

import time

import psycopg
import pytest
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from tenantry.queue import JobState
from tenantry.queue.drivers import ClaimRequest, QueueDriver
from tenantry.queue.job import Job
from tenantry.queue.sources import JobSource
from tests.conftest import TenantryFactory
from tests.integration.queue.handlers import noop_registry
from tests.integration.queue.support import Env, build_env

pytestmark = pytest.mark.postgres


def _claim(source: JobSource, conn: object, limit: int = 10) -> list[Job]:
    return source.driver.claim(
        conn,  # type: ignore[arg-type]
        ClaimRequest(
            worker_id="test-claim",
            queues=["default"],
            limit=limit,
            lease_seconds=30,
            tenants=None,
            fair=False,
        ),
    )


def _pooled(engine: Engine) -> tuple[bool, object]:
    """(autocommit, transaction status) of the connection the pool hands out next."""
    with engine.connect() as conn:
        raw = conn.connection.driver_connection
        assert isinstance(raw, psycopg.Connection)
        return raw.autocommit, raw.info.transaction_status


def _live(env: Env) -> dict[str, int]:
    return {state: n for state, n in env.counts("acme").items() if n}


def _setup(make_tenantry: TenantryFactory) -> tuple[Env, JobSource, Engine, QueueDriver]:
    """Five available jobs of acme, its job source, the claim engine and the driver."""
    env = build_env(make_tenantry, "postgresql", "shared", noop_registry())
    env.enqueue_many("acme", "record", [{"n": i} for i in range(5)])
    source = env.source("acme")
    return env, source, source.claim_engine(), source.driver


def test_a_claim_alone_is_committed_in_one_statement(make_tenantry: TenantryFactory) -> None:
    env, source, engine, driver = _setup(make_tenantry)
    assert driver.claims_in_one_statement(fair=False)
    assert not driver.claims_in_one_statement(fair=True)  # locks limited tenants first
    with driver.claim_connection(engine, alone=True) as conn:
        jobs = _claim(source, conn, limit=3)
        raw = conn.connection.driver_connection
        assert isinstance(raw, psycopg.Connection)
        # No transaction left open: the statement committed on its own.
        assert raw.info.transaction_status is psycopg.pq.TransactionStatus.IDLE
        # Another connection sees the claim before the block ends.
        assert [env.state("acme", j.id) for j in jobs] == [JobState.RUNNING] * 3
    assert _pooled(engine) == (False, psycopg.pq.TransactionStatus.IDLE)
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]


def test_a_claim_with_acknowledgements_is_one_transaction(
    make_tenantry: TenantryFactory,
) -> None:
    env, source, engine, driver = _setup(make_tenantry)
    with driver.claim_connection(engine, alone=True) as conn:
        first = _claim(source, conn, limit=2)

    def acknowledge_claim_and_die() -> None:
        with driver.claim_connection(engine, alone=False) as conn:
            done = driver.complete(conn, [(j.id, j.lease_token or "") for j in first])
            assert done == {j.id for j in first}
            assert len(_claim(source, conn, limit=3)) == 3
            raise RuntimeError("the worker died before the commit")

    with pytest.raises(RuntimeError):
        acknowledge_claim_and_die()
    # Rolled back together: nothing acknowledged, nothing more claimed.
    assert _live(env) == {"running": 2, "available": 3}
    assert _pooled(engine) == (False, psycopg.pq.TransactionStatus.IDLE)


def test_a_failed_claim_alone_leaves_no_autocommitting_connection(
    make_tenantry: TenantryFactory,
) -> None:
    env, source, engine, driver = _setup(make_tenantry)

    # A statement the database refuses: the connection stays, back in transaction mode.
    def refused() -> None:
        with driver.claim_connection(engine, alone=True) as conn:
            raw = conn.connection.driver_connection
            assert isinstance(raw, psycopg.Connection)
            raw.execute("SELECT 1 / 0")

    with pytest.raises(psycopg.errors.DivisionByZero):
        refused()
    assert _pooled(engine) == (False, psycopg.pq.TransactionStatus.IDLE)

    # The server ends the session mid-claim: the connection is invalidated, not pooled.
    with driver.claim_connection(engine, alone=True) as conn:
        raw = conn.connection.driver_connection
        assert isinstance(raw, psycopg.Connection)
        pid = raw.info.backend_pid
    with psycopg.connect(
        engine.url.set(drivername="postgresql").render_as_string(hide_password=False),
        autocommit=True,
    ) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        for _ in range(100):  # it only signals: wait until the session is gone
            gone = "SELECT 1 FROM pg_stat_activity WHERE pid = %s"
            if not admin.execute(gone, (pid,)).fetchone():
                break
            time.sleep(0.05)

    def claim_on_the_dead_connection() -> None:
        with driver.claim_connection(engine, alone=True) as conn:
            _claim(source, conn)

    with pytest.raises(OperationalError) as lost:
        claim_on_the_dead_connection()
    assert lost.value.connection_invalidated
    assert _pooled(engine) == (False, psycopg.pq.TransactionStatus.IDLE)
    # Nothing was claimed by the failed attempt; the next claim takes every job.
    with driver.claim_connection(engine, alone=True) as conn:
        assert len(_claim(source, conn)) == 5
    assert _live(env) == {"running": 5}
