"""PostgreSQL: the standalone enqueue, one autocommitted statement on the driver's connection.

It runs past SQLAlchemy's statement handling, so these tests pin what callers
relied on before: committed when it returns, workers woken (NOTIFY in the same
statement), SQLAlchemy's error types (``QueueUnavailableError`` for a lost
connection), and a pool that never keeps a dead or autocommitting connection.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, event
from sqlalchemy.exc import DataError, OperationalError
from sqlalchemy.pool import Pool

from tenantry import tenant_context
from tenantry.errors import (
    InvalidTenantId,
    PayloadValidationError,
    QueueUnavailableError,
    TenantNotFoundError,
    TenantSuspendedError,
    UnknownJobKind,
)
from tenantry.queue import JobState
from tenantry.queue.drivers.postgres import CHANNEL
from tenantry.queue.drivers.postgres.fast_insert import text_params
from tests.conftest import TenantryFactory
from tests.integration.queue.handlers import noop_registry
from tests.integration.queue.support import Env, EnvFactory, build_env

pytestmark = pytest.mark.postgres

PG_MODES = pytest.mark.parametrize("mode", ["shared", "schema", "database"])


def _dsn(engine: Engine) -> str:
    return engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


class _Listener:
    """A LISTEN on the queue's channel in the source database of a tenant."""

    def __init__(self, env: Env, tenant_id: str) -> None:
        self.conn = psycopg.connect(_dsn(env.source(tenant_id).engine()), autocommit=True)
        self.conn.execute(f"LISTEN {CHANNEL}")

    def received(self, timeout: float = 5.0) -> list[str]:
        """Payloads (queue names) of the notifications that arrive within *timeout*."""
        got = [n.payload for n in self.conn.notifies(timeout=timeout, stop_after=1)]
        # Anything else already delivered (one bulk statement wakes each queue once).
        got += [n.payload for n in self.conn.notifies(timeout=0.2)]
        return got

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def listen() -> Iterator[Any]:
    opened: list[_Listener] = []

    def factory(env: Env, tenant_id: str) -> _Listener:
        listener = _Listener(env, tenant_id)
        opened.append(listener)
        return listener

    yield factory
    for listener in opened:
        listener.close()


def _terminate_others(env: Env, tenant_id: str) -> int:
    """Terminate every other session on the tenant's source database."""
    source = env.source(tenant_id)
    database = source.engine().url.database
    with psycopg.connect(_dsn(source.engine()), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (database,),
        ).fetchall()
        # pg_terminate_backend only signals: wait until the sessions are gone.
        for _ in range(100):
            left = conn.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid() "
                "AND backend_type = 'client backend'",
                (database,),
            ).fetchone()
            if left is not None and left[0] == 0:
                break
            time.sleep(0.05)
    return sum(1 for (ok,) in rows if ok)


def _pooled_autocommit(engine: Engine) -> bool:
    """Whether the connection the pool hands out next is in autocommit mode."""
    with engine.connect() as conn:
        raw = conn.connection.driver_connection
        assert isinstance(raw, psycopg.Connection)
        return raw.autocommit


@PG_MODES
def test_standalone_enqueue_is_committed_and_wakes_workers(
    make_tenantry: TenantryFactory, mode: str, listen: Any
) -> None:
    env = build_env(make_tenantry, "postgresql", mode, noop_registry())
    listener = listen(env, "acme")
    one = env.enqueue("acme", "record", {"n": 1}, queue="fast", priority=-3, correlation_id="c-1")
    assert listener.received() == ["fast"]
    # Committed when enqueue returned: another connection sees it, as written.
    job = env.job("acme", one.id)
    assert (job.kind, job.queue, job.priority, job.correlation_id) == ("record", "fast", -3, "c-1")
    assert (job.state, job.payload["n"], job.errors, job.attempt) == (JobState.AVAILABLE, 1, [], 0)
    assert (one.queue, one.state, one.created) == ("fast", JobState.AVAILABLE, True)
    assert one.tenant_id == "acme"

    few = env.enqueue_many("acme", "record", [{"n": i} for i in range(5)], queue="few")
    assert listener.received() == ["few"]
    assert [env.job("acme", j.id).payload["n"] for j in few] == list(range(5))

    later = env.enqueue("acme", "other", {"n": 2}, delay=3600)
    assert later.state is JobState.SCHEDULED
    assert env.state("acme", later.id) is JobState.SCHEDULED
    keyed = env.enqueue("acme", "record", {"n": 3}, idempotency_key="k", queue="keyed")
    assert listener.received() == ["default", "keyed"]
    assert env.enqueue("acme", "record", {"n": 4}, idempotency_key="k").id == keyed.id
    assert env.total("acme") == 8
    assert env.total("globex") == 0
    assert not _pooled_autocommit(env.source("acme").enqueue_engine())


@PG_MODES
async def test_async_standalone_enqueue_is_committed_and_wakes_workers(
    make_env: EnvFactory, mode: str, listen: Any
) -> None:
    env = make_env("postgresql", mode, noop_registry())
    listener = listen(env, "acme")
    async with tenant_context("acme"):
        one = await env.queue.aenqueue("record", {"n": 1}, queue="fast")
        assert listener.received() == ["fast"]
        few = await env.queue.aenqueue_many("record", [{"n": i} for i in range(3)])
        assert listener.received() == ["default"]
    assert (await env.ajob("acme", one.id)).payload["n"] == 1
    assert [(await env.ajob("acme", j.id)).payload["n"] for j in few] == [0, 1, 2]
    assert env.total("acme") == 4


def test_standalone_errors_keep_their_types_and_the_pool_its_connection(
    make_tenantry: TenantryFactory,
) -> None:
    env = build_env(make_tenantry, "postgresql", "shared", noop_registry())
    engine = env.source("acme").enqueue_engine()
    with tenant_context("acme"):
        env.queue.enqueue("record", {"n": 0})
        with pytest.raises(UnknownJobKind):
            env.queue.enqueue("nope", {"n": 1})
        with pytest.raises(PayloadValidationError):
            env.queue.enqueue("record", {"n": "x"})
        # Refused by the database (the column is an integer): SQLAlchemy's DataError,
        # as the generic path raised it; not "unavailable", and the connection stays.
        with pytest.raises(DataError) as caught:
            env.queue.enqueue("record", {"n": 1}, max_attempts=2**40)
        assert not caught.value.connection_invalidated
        assert isinstance(caught.value.orig, psycopg.errors.NumericValueOutOfRange)
        assert "INSERT INTO" in str(caught.value.statement)
    assert not _pooled_autocommit(engine)
    checked_out_before = engine.pool.checkedout()  # type: ignore[attr-defined]
    assert checked_out_before == 0
    env.t.suspend_tenant("acme")
    with tenant_context("acme"), pytest.raises(TenantSuspendedError):
        env.queue.enqueue("record", {"n": 2})
    env.t.resume_tenant("acme")
    env.enqueue("acme", "record", {"n": 3})
    assert sorted(j.payload["n"] for j in env.queue.admin.list_jobs(tenant_id="acme")) == [0, 3]


def _prepared_on(engine: Engine) -> set[str]:
    """Names of the statements prepared on the connection the pool hands out next."""
    with engine.connect() as conn:
        raw = conn.connection.driver_connection
        assert isinstance(raw, psycopg.Connection)
        return {r[0] for r in raw.execute("SELECT name FROM pg_prepared_statements")}


def test_one_job_goes_in_through_tenantry_s_prepared_statement_and_survives_its_loss(
    make_tenantry: TenantryFactory,
) -> None:
    env = build_env(make_tenantry, "postgresql", "shared", noop_registry())
    engine = env.source("acme").enqueue_engine()
    first = env.enqueue("acme", "record", {"n": 1}, correlation_id="ü\t\\")
    assert "tenantry_enqueue_one" in _prepared_on(engine)
    # Whatever drops the connection's prepared statements (DISCARD ALL from a
    # pooler's reset, say), the next enqueue prepares it again.
    with engine.connect() as conn:
        conn.exec_driver_sql("DEALLOCATE ALL")
        conn.commit()
    assert "tenantry_enqueue_one" not in _prepared_on(engine)
    second = env.enqueue("acme", "record", {"n": 2})
    assert "tenantry_enqueue_one" in _prepared_on(engine)
    assert env.job("acme", first.id).correlation_id == "ü\t\\"
    assert [env.job("acme", j.id).payload["n"] for j in (first, second)] == [1, 2]
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert not _pooled_autocommit(engine)


def test_a_connection_told_not_to_prepare_prepares_nothing(
    make_tenantry: TenantryFactory,
) -> None:
    env = build_env(make_tenantry, "postgresql", "shared", noop_registry())
    engine = env.source("acme").enqueue_engine()

    @event.listens_for(engine, "connect")
    def no_prepare(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.prepare_threshold = None  # as behind a transaction-mode pooler

    engine.dispose()
    jobs = [env.enqueue("acme", "record", {"n": i}) for i in range(8)]
    assert _prepared_on(engine) == set()
    assert [env.job("acme", j.id).payload["n"] for j in jobs] == list(range(8))


def test_text_parameters_refuse_nul_and_write_timestamps_in_iso_8601() -> None:
    when = datetime(2031, 2, 3, 4, 5, 6, 7, tzinfo=UTC)
    assert text_params(["a", 7, None, when], "utf-8") == [
        b"a",
        b"7",
        None,
        b"2031-02-03T04:05:06.000007+00:00",
    ]
    assert text_params(["ok", "n\x00ul"], "utf-8") is None  # psycopg's path refuses it


async def test_async_standalone_errors_keep_their_types(make_env: EnvFactory) -> None:
    env = make_env("postgresql", "shared", noop_registry())
    async with tenant_context("acme"):
        await env.queue.aenqueue("record", {"n": 0})
        with pytest.raises(UnknownJobKind):
            await env.queue.aenqueue("nope", {"n": 1})
        with pytest.raises(PayloadValidationError):
            await env.queue.aenqueue("record", {"n": "x"})
        with pytest.raises(DataError) as caught:
            await env.queue.aenqueue("record", {"n": 1}, max_attempts=2**40)
        assert not caught.value.connection_invalidated
        await env.queue.aenqueue("record", {"n": 2})
    async with env.source("acme").async_engine().connect() as aconn:
        raw = (await aconn.get_raw_connection()).driver_connection
        assert isinstance(raw, psycopg.AsyncConnection)
        assert not raw.autocommit
    assert sorted(j.payload["n"] for j in env.queue.admin.list_jobs(tenant_id="acme")) == [0, 2]


@PG_MODES
def test_a_terminated_connection_is_unavailable_then_replaced(
    make_tenantry: TenantryFactory, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No idle pre-ping: the enqueue itself must meet the dead connection.
    monkeypatch.setattr("tenantry.queue.engines.PING_AFTER_IDLE", 3600.0)
    env = build_env(make_tenantry, "postgresql", mode, noop_registry())
    kept = env.enqueue("acme", "record", {"n": 1})
    assert _terminate_others(env, "acme") >= 1
    with tenant_context("acme"), pytest.raises(QueueUnavailableError) as caught:
        env.queue.enqueue("record", {"n": 2})
    cause = caught.value.__cause__
    assert isinstance(cause, OperationalError)
    assert cause.connection_invalidated
    assert isinstance(cause.orig, psycopg.OperationalError)
    # The pool dropped the dead connection: the next enqueue works, in transaction mode.
    again = env.enqueue("acme", "record", {"n": 3})
    assert not _pooled_autocommit(env.source("acme").enqueue_engine())
    assert sorted(j.id for j in env.queue.admin.list_jobs(tenant_id="acme")) == [kept.id, again.id]


@PG_MODES
async def test_async_a_terminated_connection_is_unavailable_then_replaced(
    make_env: EnvFactory, mode: str
) -> None:
    env = make_env("postgresql", mode, noop_registry())
    async with tenant_context("acme"):
        kept = await env.queue.aenqueue("record", {"n": 1})
        assert _terminate_others(env, "acme") >= 1
        with pytest.raises(QueueUnavailableError) as caught:
            await env.queue.aenqueue("record", {"n": 2})
        cause = caught.value.__cause__
        assert isinstance(cause, OperationalError)
        assert cause.connection_invalidated
        again = await env.queue.aenqueue("record", {"n": 3})
    ids = sorted(j.id for j in env.queue.admin.list_jobs(tenant_id="acme"))
    assert ids == [kept.id, again.id]


def test_a_refused_connection_is_unavailable(
    make_tenantry: TenantryFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pool cannot connect (server down): ``QueueUnavailableError``, as before."""
    env = build_env(make_tenantry, "postgresql", "shared", noop_registry())
    env.enqueue("acme", "record", {"n": 1})
    env.source("acme").enqueue_engine().dispose()

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise psycopg.OperationalError("connection refused (test)")

    with monkeypatch.context() as patch:
        patch.setattr(psycopg, "connect", refuse)
        with tenant_context("acme"), pytest.raises(QueueUnavailableError) as caught:
            env.queue.enqueue("record", {"n": 2})
    assert isinstance(caught.value.__cause__, OperationalError)
    env.enqueue("acme", "record", {"n": 3})
    assert env.total("acme") == 2


async def test_async_a_refused_connection_is_unavailable(
    make_env: EnvFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = make_env("postgresql", "shared", noop_registry())
    async with tenant_context("acme"):
        await env.queue.aenqueue("record", {"n": 1})
        await env.source("acme").async_engine().dispose()

        async def refuse(*args: Any, **kwargs: Any) -> Any:
            raise psycopg.OperationalError("connection refused (test)")

        with monkeypatch.context() as patch:
            patch.setattr(psycopg.AsyncConnection, "connect", refuse)
            with pytest.raises(QueueUnavailableError) as caught:
                await env.queue.aenqueue("record", {"n": 2})
        assert isinstance(caught.value.__cause__, OperationalError)
        await env.queue.aenqueue("record", {"n": 3})
    assert env.total("acme") == 2


class _Counter:
    """Counts pool connects and catalog statements from the moment it is attached."""

    def __init__(self, pools: list[Pool], catalog: Engine) -> None:
        self.connects = 0
        self.catalog_queries = 0
        for pool in pools:
            event.listen(pool, "connect", self._connected)
        event.listen(catalog, "before_cursor_execute", self._queried)

    def _connected(self, *args: Any) -> None:
        self.connects += 1

    def _queried(self, *args: Any) -> None:
        self.catalog_queries += 1


@PG_MODES
def test_warm_makes_the_first_enqueue_connect_and_look_up_nothing(
    make_tenantry: TenantryFactory, mode: str
) -> None:
    env = build_env(make_tenantry, "postgresql", mode, noop_registry())
    pools = [env.source(t).enqueue_engine().pool for t in env.tenants]
    env.t.catalog.invalidate()
    env.queue.warm(env.tenants)
    assert all(pool.checkedin() >= 1 for pool in pools)  # type: ignore[attr-defined]
    counter = _Counter(pools, env.t.catalog.engine)
    for n, tenant_id in enumerate(env.tenants):
        env.enqueue(tenant_id, "record", {"n": n})
        env.enqueue_many(tenant_id, "record", [{"n": i} for i in range(300)])  # COPY path
    assert (counter.connects, counter.catalog_queries) == (0, 0)
    assert [env.total(t) for t in env.tenants] == [301, 301]


@PG_MODES
async def test_awarm_makes_the_first_aenqueue_connect_and_look_up_nothing(
    make_env: EnvFactory, mode: str
) -> None:
    env = make_env("postgresql", mode, noop_registry())
    pools = [env.source(t).async_engine().sync_engine.pool for t in env.tenants]
    env.t.catalog.invalidate()
    await env.queue.awarm(env.tenants)
    assert all(pool.checkedin() >= 1 for pool in pools)  # type: ignore[attr-defined]
    counter = _Counter(pools, env.t.catalog.engine)
    for n, tenant_id in enumerate(env.tenants):
        async with tenant_context(tenant_id):
            await env.queue.aenqueue("record", {"n": n})
    assert (counter.connects, counter.catalog_queries) == (0, 0)
    assert [env.total(t) for t in env.tenants] == [1, 1]


def test_warm_refuses_unknown_and_invalid_tenants(make_tenantry: TenantryFactory) -> None:
    env = build_env(make_tenantry, "postgresql", "shared", noop_registry())
    with pytest.raises(TenantNotFoundError):
        env.queue.warm(["acme", "nobody"])
    with pytest.raises(InvalidTenantId):
        env.queue.warm(["acme'; DROP TABLE tenantry.tenants; --"])
    env.queue.warm([])
    assert env.enqueue("acme", "record", {"n": 1}).created
