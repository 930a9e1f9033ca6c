"""Retiring an engine: a connection out at the time is closed when it comes back."""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from sqlalchemy import text

from tenantry import Tenantry
from tenantry.queue.engines import queue_async_engine
from tenantry.tenancy.engines import aretire, retire
from tests.conftest import TenantryFactory

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg(make_tenantry: TenantryFactory) -> Tenantry:
    return make_tenantry("postgresql")


def test_a_connection_out_when_the_engine_is_retired_is_closed_on_return(pg: Tenantry) -> None:
    engine = pg.default_store.engine()
    conn = engine.connect()
    conn.execute(text("SELECT 1"))
    raw = conn.connection.driver_connection
    assert isinstance(raw, psycopg.Connection)
    retire(engine)
    assert not raw.closed  # still in use: retiring does not pull it from under its user
    conn.close()
    assert raw.closed  # back to the retired pool, which nothing reads again


def test_a_retired_engine_pools_its_new_connections(pg: Tenantry) -> None:
    engine = pg.default_store.engine()
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    idle = engine.pool.checkedin()  # type: ignore[attr-defined]
    assert idle == 1
    retire(engine)
    with engine.connect() as conn:
        raw = conn.connection.driver_connection
        conn.execute(text("SELECT 1"))
    assert raw is not None
    assert not raw.closed
    assert engine.pool.checkedin() == 1  # type: ignore[attr-defined]


async def test_an_async_connection_out_when_the_engine_is_retired_is_closed_on_return(
    pg: Tenantry,
) -> None:
    engine = pg.default_store.async_engine()
    conn = await engine.connect()
    await conn.execute(text("SELECT 1"))
    raw = (await conn.get_raw_connection()).driver_connection
    assert isinstance(raw, psycopg.AsyncConnection)
    await aretire(engine)
    assert not raw.closed
    await conn.close()
    assert raw.closed
    async with engine.connect() as again:  # the engine goes on, on a new pool
        assert (await again.execute(text("SELECT 1"))).scalar() == 1
    await pg.aclose()  # on the loop: closing async connections awaits the driver


async def test_a_tenant_database_forgotten_from_a_thread_has_its_connections_closed(
    pg: Tenantry,
) -> None:
    """``delete_tenant`` runs in a thread beside a worker's loop: the loop closes them.

    Closing an async connection awaits the driver, which the thread cannot do;
    letting the pool go from the thread would leave its connections open.
    """
    pg.create_tenant("acme", isolation="database")
    store = pg.default_store
    async with queue_async_engine(store, "acme").connect() as conn:
        raw = (await conn.get_raw_connection()).driver_connection
    assert raw is not None
    assert not raw.closed
    await asyncio.to_thread(store.forget_tenant_engines, "acme")
    for _ in range(100):
        if raw.closed:
            break
        await asyncio.sleep(0.02)
    assert raw.closed
    await pg.aclose()
