"""Behind PgBouncer in transaction mode: tenant reads, the queue worker, the ``pooler`` setting.

A transaction-mode pooler runs each transaction on whichever server
connection is free. Statements psycopg prepared on one connection are then
missing on the next or collide with another client's of the same name, a
LISTEN is heard by nobody, and PgBouncer refuses startup ``options``. With
``pooler = "transaction"`` tenantry keeps nothing on a connection beyond a
transaction; these tests run real workloads through a private PgBouncer
(``tests/pgbouncer.py``, pool size 4) and count every foreign row and error.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.exc import DBAPIError

from tenantry import StoreConfig, Tenantry, TenantryConfig, tenant_context
from tenantry.errors import ConfigError
from tenantry.queue import JobContext, JobRegistry, Queue
from tenantry.queue import engines as queue_engines
from tenantry.queue.drivers.postgres import CLAIM_SESSION_SETTINGS
from tenantry.tenancy.config import config_from_dict
from tests.conftest import TenantryFactory
from tests.integration.queue.handlers import Item, Recorder
from tests.integration.queue.support import quick_worker, running, wait_until
from tests.models import Product
from tests.pgbouncer import PgBouncer, UrlViaPgBouncer

pytestmark = pytest.mark.postgres

TENANTS = ("acme", "globex", "initech", "umbrella", "hooli")
THREADS = 32
READS_PER_THREAD = 40
ROWS_PER_TENANT = 3

PooledFactory = Callable[..., Tenantry]


@pytest.fixture
def pooled(
    make_tenantry: TenantryFactory, pg_database: str, pgbouncer: UrlViaPgBouncer, tmp_path: Path
) -> PooledFactory:
    """Build a Tenantry whose store URL goes through PgBouncer (*store*: StoreConfig options)."""

    def factory(**store: Any) -> Tenantry:
        url = pgbouncer(pg_database)
        config = TenantryConfig(
            stores={"default": StoreConfig("default", url, **store)}, data_dir=str(tmp_path)
        )
        return make_tenantry("postgresql", config)

    return factory


@pytest.fixture
async def apooled(pooled: PooledFactory) -> AsyncIterator[PooledFactory]:
    """``pooled`` for async tests: the async engines are disposed on the test's loop."""
    built: list[Tenantry] = []

    def factory(**store: Any) -> Tenantry:
        t = pooled(**store)
        built.append(t)
        return t

    yield factory
    for t in built:
        await t.aclose()


def _seed(t: Tenantry, mode: str) -> None:
    for tid in TENANTS:
        t.create_tenant(tid, isolation=mode)
        with tenant_context(tid), t.session() as session:
            session.add_all(Product(name=f"{tid}-{i}") for i in range(ROWS_PER_TENANT))
            session.commit()


class Outcome:
    """What the reading threads saw: reads done, foreign rows, errors by first line."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reads = 0
        self.foreign = 0
        self.errors: Counter[str] = Counter()

    @property
    def prepared_statement_errors(self) -> int:
        return sum(n for e, n in self.errors.items() if "prepared statement" in e)


def _read_concurrently(t: Tenantry, reads: int = READS_PER_THREAD) -> Outcome:
    """THREADS threads, each reading every tenant's products *reads* times, round robin."""
    outcome = Outcome()

    def reader(index: int) -> None:
        for n in range(reads):
            tid = TENANTS[(index + n) % len(TENANTS)]
            try:
                with tenant_context(tid), t.session() as session:
                    rows = session.scalars(select(Product).order_by(Product.id)).all()
                    names = [p.name for p in rows]
                    owners = {p.tenant_id for p in rows}
                    # Committed, as a request would: psycopg forgets its
                    # statement counts on every rollback, never on commit.
                    session.commit()
            except DBAPIError as exc:
                with outcome.lock:
                    outcome.errors[str(exc.orig).splitlines()[0]] += 1
                continue
            foreign = sum(1 for name in names if not name.startswith(f"{tid}-"))
            foreign += len(owners - {tid})
            with outcome.lock:
                outcome.reads += 1
                outcome.foreign += foreign
                if len(names) != ROWS_PER_TENANT:
                    outcome.errors[f"{tid} saw {len(names)} rows"] += 1

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(reader, range(THREADS)))
    return outcome


# -- (a) tenant reads through the pooler ---------------------------------------------------
def test_schema_mode_reads_through_pgbouncer_see_only_their_tenant(
    pooled: PooledFactory, pgbouncer_server: PgBouncer
) -> None:
    t = pooled(pooler="transaction")
    _seed(t, "schema")
    outcome = _read_concurrently(t)
    assert outcome.errors == Counter()
    assert outcome.foreign == 0
    assert outcome.reads == THREADS * READS_PER_THREAD
    # The reads really shared PgBouncer's few server connections.
    assert pgbouncer_server.pool_size < THREADS


def test_without_the_pooler_setting_prepared_statements_break_through_pgbouncer(
    pooled: PooledFactory,
) -> None:
    """``pooler`` left at "none": tenant sessions are still safe, the admin's engine is not.

    Session connections never prepare statements (a tenant's SQL could
    re-prepare one of psycopg's statement names for the next tenant), so the
    tenants' reads work through PgBouncer either way. The admin's engine does
    prepare: a statement is prepared on its 6th run on one client connection,
    and with 32 threads on 4 server connections its name soon meets a server
    connection that lacks it or holds another client's. That is what the
    setting prevents (and shows that the tests above can fail). Up to three
    rounds are run, so that a lucky schedule cannot make this test flaky.
    """
    t = pooled()
    _seed(t, "schema")
    outcome = _read_concurrently(t)
    assert outcome.errors == Counter()
    assert outcome.foreign == 0
    admin = t.store("default").admin_engine()
    errors: Counter[str] = Counter()
    lock = threading.Lock()

    def admin_work(_: int) -> None:
        for _ in range(READS_PER_THREAD):
            try:
                with admin.begin() as conn:
                    conn.execute(
                        text("SELECT count(*) FROM pg_class WHERE relname = :n"), {"n": "products"}
                    ).scalar()
            except DBAPIError as exc:
                with lock:
                    errors[str(exc.orig).splitlines()[0]] += 1

    for _ in range(3):
        with ThreadPoolExecutor(THREADS) as pool:
            list(pool.map(admin_work, range(THREADS)))
        if any("prepared statement" in e for e in errors):
            break
    assert any("prepared statement" in e for e in errors), errors


def test_every_engine_of_a_pooled_store_never_prepares(
    pooled: PooledFactory,
) -> None:
    t = pooled(pooler="transaction")
    t.create_tenant("acme", isolation="shared")
    t.create_tenant("globex", isolation="database")
    store = t.store("default")
    engines = {
        "app": store.engine(),
        "admin": store.admin_engine(),
        "pooled admin": store.pooled_admin_engine(2),
        "tenant app": store.tenant_engine("globex"),
        "tenant admin": store.tenant_admin_engine("globex"),
        "claim": queue_engines.claim_engine(store),
        "enqueue": queue_engines.enqueue_engine(store),
        "tenant enqueue": queue_engines.enqueue_engine(store, "globex"),
    }
    try:
        for role, engine in engines.items():
            with engine.connect() as conn:
                raw = conn.connection.driver_connection
                assert isinstance(raw, psycopg.Connection)
                assert raw.prepare_threshold is None, role
    finally:
        engines["pooled admin"].dispose()
        engines["tenant admin"].dispose()


async def test_async_sessions_of_a_pooled_store_never_prepare(apooled: PooledFactory) -> None:
    t = apooled(pooler="transaction")
    t.create_tenant("acme", isolation="schema")
    store = t.store("default")
    engine = store.async_engine()
    async with engine.connect() as conn:
        raw = (await conn.get_raw_connection()).driver_connection
        assert isinstance(raw, psycopg.AsyncConnection)
        assert raw.prepare_threshold is None
    for _ in range(10):  # past psycopg's default threshold of 5
        async with tenant_context("acme"), t.async_session() as session:
            assert list(await session.scalars(select(Product))) == []
            await session.commit()


def test_a_store_without_the_setting_still_prepares(pooled: PooledFactory) -> None:
    t = pooled()
    store = t.store("default")
    with store.admin_engine().connect() as conn:
        raw = conn.connection.driver_connection
        assert isinstance(raw, psycopg.Connection)
        assert raw.prepare_threshold == 5


# -- (b) the queue worker through the pooler --------------------------------------------------
def _recording(rec: Recorder) -> JobRegistry:
    registry = JobRegistry()

    @registry.handler("hit")
    async def hit(ctx: JobContext, payload: Item) -> None:
        rec.hit(ctx)

    return registry


@pytest.mark.parametrize("fair", [True, False], ids=["fair", "fifo"])
async def test_worker_runs_store_and_tenant_database_jobs_through_pgbouncer(
    apooled: PooledFactory, fair: bool, caplog: pytest.LogCaptureFixture
) -> None:
    t = apooled(pooler="transaction")
    shared = ("acme", "globex", "initech")
    for tid in shared:
        t.create_tenant(tid, isolation="shared")
    t.create_tenant("hooli", isolation="database")
    rec = Recorder()
    registry = _recording(rec)
    queue = Queue(t, registry)
    queue.setup()
    expected: set[tuple[str, int]] = set()
    for tid in (*shared, "hooli"):
        with tenant_context(tid):
            jobs = queue.enqueue_many("hit", [{"n": i} for i in range(25)])
            expected |= {(tid, j.id) for j in jobs}
            one = queue.enqueue("hit", {"n": 99})  # the one-row standalone path
            expected.add((tid, one.id))

    def all_completed() -> bool:
        return all(queue.admin.count_jobs(tenant_id=tid)["completed"] == 26 for tid in shared)

    caplog.set_level(logging.INFO, logger="tenantry")
    worker = quick_worker(t, registry, fair=fair)
    async with running(worker):
        tasks = [task.get_name() for task in worker.background_tasks()]
        assert tasks
        assert not [name for name in tasks if "listen" in name]
        await wait_until(all_completed, what="store-database jobs completed")
        await wait_until(
            lambda: queue.admin.count_jobs(tenant_id="hooli")["completed"] == 26,
            what="tenant-database jobs completed",
        )
    assert set(rec.calls) == expected
    assert all(n == 1 for n in rec.calls.values())
    assert worker.stats.dead == worker.stats.retried == worker.stats.lost == 0
    notices = [
        r.getMessage() for r in caplog.records if "behind a transaction pooler" in r.getMessage()
    ]
    assert notices == [
        "store default is behind a transaction pooler: polling for jobs every 0.05 s "
        "instead of LISTEN"
    ]


def _pooled_claim_engine(pooled: PooledFactory) -> Engine:
    """A pooled store with one shared tenant and its jobs table: the worker's claim engine."""
    t = pooled(pooler="transaction")
    t.create_tenant("acme", isolation="shared")
    Queue(t, JobRegistry()).setup()
    return queue_engines.claim_engine(t.store("default"))


def test_claim_transactions_carry_the_claim_settings_locally(pooled: PooledFactory) -> None:
    engine = _pooled_claim_engine(pooled)
    from tenantry.queue.drivers.postgres import PostgresDriver

    driver = PostgresDriver()
    names = sorted(CLAIM_SESSION_SETTINGS)
    query = "SELECT " + ", ".join(f"current_setting('{n}')" for n in names)
    for alone in (True, False):
        with driver.claim_connection(engine, alone=alone) as conn:
            inside = conn.exec_driver_sql(query).one()
            in_transaction = conn.exec_driver_sql("SELECT now() = statement_timestamp()").scalar()
        assert dict(zip(names, inside, strict=True)) == CLAIM_SESSION_SETTINGS
        # A claim is one transaction (now() is its start, not the statement's).
        assert in_transaction is False
    with engine.connect() as conn:  # nothing outlives the claim transaction
        after = conn.exec_driver_sql(query).one()
    assert dict(zip(names, after, strict=True)) != CLAIM_SESSION_SETTINGS
    # And the connection went back to the pool idle and not in autocommit.
    with engine.connect() as conn:
        raw = conn.connection.driver_connection
        assert isinstance(raw, psycopg.Connection)
        assert raw.autocommit is False


def test_claim_transaction_rolls_back_on_error(pooled: PooledFactory) -> None:
    engine = _pooled_claim_engine(pooled)
    from tenantry.queue.drivers.postgres import PostgresDriver

    driver = PostgresDriver()

    def failing_claim() -> None:
        with driver.claim_connection(engine, alone=False) as conn:
            conn.exec_driver_sql("CREATE TABLE tenantry.pgb_probe (id int)")
            conn.exec_driver_sql("SELECT 1/0")

    with pytest.raises(DBAPIError, match="division by zero"):
        failing_claim()
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT to_regclass('tenantry.pgb_probe')")) is None


def test_the_unpooled_claim_engine_is_refused_by_pgbouncer(pooled: PooledFactory) -> None:
    """Without the setting the claim engine sends startup ``options``, which PgBouncer refuses."""
    t = pooled()
    store = t.store("default")
    with (
        pytest.raises(DBAPIError, match="unsupported startup parameter: options"),
        queue_engines.claim_engine(store).connect(),
    ):
        pass


# -- (c) configuration ------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["session", "Transaction", "pgbouncer", "", 1, True])
def test_bad_pooler_values_are_refused_with_one_line(value: object) -> None:
    data = {"stores": {"main": {"url": "postgresql://app@db/app", "pooler": value}}}
    with pytest.raises(ConfigError) as info:
        config_from_dict(data, "tenantry.toml")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"tenantry.toml: stores.main.pooler = {value!r}: expected ")


def test_pooler_defaults_to_none_and_accepts_transaction() -> None:
    assert StoreConfig("main", "postgresql://app@db/app").pooler == "none"
    store = StoreConfig("main", "postgresql://app@db/app", pooler="transaction")
    assert store.transaction_pooled
    data = {"stores": {"main": {"url": "postgresql://app@db/app", "pooler": "none"}}}
    assert not config_from_dict(data).store("main").transaction_pooled


def test_a_pooler_on_sqlite_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        StoreConfig("main", "sqlite:///x.db", pooler="transaction")
    assert str(info.value) == (
        "stores.main.pooler = 'transaction': a pooler applies to PostgreSQL stores only "
        "(this one is sqlite)"
    )


@pytest.mark.parametrize("key", ["url", "admin_url"])
def test_prepare_threshold_in_a_url_is_refused(key: str) -> None:
    data = {
        "stores": {
            "main": {
                "url": "postgresql://app@db/app",
                key: "postgresql://o@db/app?prepare_threshold=0",
            }
        }
    }
    with pytest.raises(ConfigError) as info:
        config_from_dict(data, "tenantry.toml")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"tenantry.toml: stores.main.{key} = ")
    assert "prepare_threshold in the URL" in message
    assert 'pooler = "transaction"' in message


def test_the_pooler_key_is_listed_among_the_store_keys() -> None:
    data = {"stores": {"main": {"url": "postgresql://app@db/app", "poolr": "transaction"}}}
    with pytest.raises(ConfigError, match=r"stores\.main\.poolr: unknown key \(.*pooler"):
        config_from_dict(data, "tenantry.toml")
